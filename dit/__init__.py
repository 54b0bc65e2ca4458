"""The Next-DiT: parameters, layers, the forward, its weight files, and what attaches to it
(precision, block streaming, placement, compile; listed in ``dit/model.py``)."""
