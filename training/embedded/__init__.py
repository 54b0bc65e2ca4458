"""The embedded default model: a synthetic shapes dataset, its checker, and the training of every
part in the real architectures and file layouts (``pipeline.py``)."""
