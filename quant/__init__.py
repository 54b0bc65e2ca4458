"""Block-quantised weights (the ggml/GGUF formats): dequantisation in plain torch, quantised
Linear layers, and encoders for writing GGUF files. Depends on torch (and numpy/gguf for writing)
only; the readers live in ``files/`` and the loaders in ``dit/``."""
