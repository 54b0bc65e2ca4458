"""Training with the pack's own code: guidance distillation (``distill.py``) and the embedded
default model (``embedded/``)."""
