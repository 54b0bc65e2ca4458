"""Dtype names and the one "auto" rule, shared by every loader and node.

Importing this module does not import torch, so nodes can show the names.

- ``DTYPES``: what every ``dtype`` input offers; ``WEIGHT_DTYPES``: the Next-DiT's, which add fp8
  storage of the block weights (``dit/precision.py``).
- ``auto``: bf16 on a GPU that computes it (CUDA with bf16 support, XPU); on a GPU without bf16
  (Turing, Pascal, a Colab T4; Apple MPS) fp16 for the components that are fp16-safe (the
  Next-DiT's fp16-safe path, Jina) and fp32 for the others (Gemma 3, whose activations overflow
  fp16; the VAE); fp32 on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"
DTYPES = (AUTO, "bf16", "fp16", "fp32")
WEIGHT_DTYPES = (*DTYPES, "fp8_e4m3fn")
_TORCH_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``bf16`` / ``fp16`` / ``fp32``; ValueError lists the names."""
    import torch

    if name not in _TORCH_NAMES:
        raise ValueError(f"unknown dtype {name!r}; allowed: {', '.join(_TORCH_NAMES)}")
    return getattr(torch, _TORCH_NAMES[name])


def auto_name(device, fp16_safe: bool) -> str:
    """The name (bf16, fp16 or fp32) that ``auto`` means on ``device`` for a component that is (or
    is not) fp16-safe."""
    import torch

    device = torch.device(device)
    if device.type == "xpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return "bf16"
    if device.type in ("cuda", "mps") and fp16_safe:
        return "fp16"
    return "fp32"


def auto_dtype(device, fp16_safe: bool) -> torch.dtype:
    """The ``auto`` dtype on ``device`` for a component that is (or is not) fp16-safe."""
    return torch_dtype(auto_name(device, fp16_safe))


def resolve(name: str, device, fp16_safe: bool) -> torch.dtype:
    """A ``DTYPES`` name as a torch dtype on ``device``; ValueError lists the allowed names."""
    if name == AUTO:
        return auto_dtype(device, fp16_safe)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return torch_dtype(name)
