"""The fp16-safe path: compute the big matrix products in fp16 on GPUs without bf16, without overflow.

Why: fp16 tops out at 65504. In this family the residual stream grows far beyond that in the
late blocks, the Gemma features fed to `cap_embedder` (pre-final-norm hidden states) carry
outliers of the same size, and silu(w1 x) * (w3 x) can exceed it too. A naive fp16 forward turns
these into inf and then NaN (black images: research peers.md §2.3, ComfyUI #8528).

How (`make_fp16_safe(model)`, in place):
- the model's activations run in fp32 (`model.compute_dtype = float32`): the residual stream, every
  norm, RoPE, the embedders and the final layer (all small next to the blocks' matrices), whose
  weights are stored in fp32;
- the Linear layers of the repeated blocks keep fp16 weights and multiply in fp16 (the expensive
  part: > 98% of the FLOPs), with their inputs brought into fp16 range:
  * `attention.out`, `feed_forward.w1/w2/w3` and `adaLN_modulation.1` return fp32: each input row
    is divided by a power of two that puts its largest magnitude at or below `_ROW_TARGET`,
    multiplied in fp16, and the scale is undone in fp32 (exact: a power of two, and a row scale
    commutes with the product). So the SwiGLU product silu(w1 x) * (w3 x) is formed in fp32 and
    w2 sees it scaled into range;
  * `attention.qkv` returns fp16 (its input is normalised), so q/k/v and the attention (SDPA)
    stay in fp16.
Block weights stored in fp8 (`loaders/dtypes.FP8Linear`) are dequantised to fp16 per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..loaders.dtypes import FP8Linear
from .offload import BLOCK_LISTS

_ROW_TARGET = 2.0 ** 6   # rows scaled so |x| <= 64 before an fp16 product (headroom for the sum)

# Block Linears computed in fp16, by attribute path -> whether they return fp32. Those that do take
# row-scaled inputs (exact, see `row_scale`); qkv returns fp16 so the attention runs in fp16.
_FP32_OUT = {
    "attention.qkv": False,
    "attention.out": True,
    "feed_forward.w1": True,
    "feed_forward.w3": True,
    "feed_forward.w2": True,
    "adaLN_modulation.1": True,
}


def fp16_block_weight(key: str) -> bool:
    """Whether an official state-dict key is a weight the fp16-safe path keeps in fp16 (a block
    Linear of `_FP32_OUT`); every other tensor is stored in fp32 on that path."""
    parts = key.split(".")
    return (parts[0] in BLOCK_LISTS and parts[-1] == "weight" and len(parts) > 3
            and ".".join(parts[2:-1]) in _FP32_OUT)


def row_scale(x: Tensor) -> Tensor:
    """Per-row power of two s >= 1 with max|x_row| / s <= _ROW_TARGET, as (..., 1) fp32.

    Computed on the device (no host synchronisation)."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    return torch.exp2(torch.ceil(torch.log2((amax / _ROW_TARGET).clamp_min(1.0))))


class _Fp16Compute:
    """Mixin for a Linear-like layer: fp16 matrix product with overflow-safe input/output handling."""

    out_fp32: bool

    def _fp16_weight(self) -> Tensor:
        return self.weight if self.weight.dtype == torch.float16 else self.weight.to(torch.float16)

    def forward(self, x: Tensor) -> Tensor:
        scale = row_scale(x) if self.out_fp32 else None
        x16 = (x if scale is None else x / scale).to(torch.float16)
        y = F.linear(x16, self._fp16_weight())
        if self.out_fp32:
            y = y.float() * scale
            return y if self.bias is None else y + self.bias.float()
        return y if self.bias is None else y + self.bias.to(torch.float16)


class Fp16Linear(_Fp16Compute, nn.Linear):
    """nn.Linear with fp16 weights computed by `_Fp16Compute`."""


class Fp16FP8Linear(_Fp16Compute, FP8Linear):
    """FP8Linear computed by `_Fp16Compute`: the fp8 weight is dequantised to fp16 per call."""

    def _fp16_weight(self) -> Tensor:
        return self.dequantized_weight(torch.float16)


def make_fp16_safe(model: nn.Module) -> nn.Module:
    """Switch a NextDiT to the fp16-safe path, in place; returns ``model``. Idempotent.

    The block Linears of `_FP32_OUT` become fp16-compute layers (weights stored in fp16, or kept in
    fp8); every other parameter (biases included) becomes fp32, and `model.compute_dtype` fp32.
    """
    fp16_weights = set()
    for list_name in BLOCK_LISTS:
        for block in getattr(model, list_name, ()):
            for path, out_fp32 in _FP32_OUT.items():
                if not _has(block, path):      # context refiner blocks have no adaLN
                    continue
                linear = block.get_submodule(path)
                if not isinstance(linear, _Fp16Compute):
                    linear.__class__ = Fp16FP8Linear if isinstance(linear, FP8Linear) else Fp16Linear
                linear.out_fp32 = out_fp32
                if linear.weight.element_size() > 1:          # fp8 stays fp8
                    linear.weight.data = linear.weight.data.to(torch.float16)
                fp16_weights.add(id(linear.weight))
    for param in model.parameters():
        if id(param) not in fp16_weights and param.dtype != torch.float32:
            param.data = param.data.float()
    model.compute_dtype = torch.float32
    return model


def is_fp16_safe(model: nn.Module) -> bool:
    return any(isinstance(m, _Fp16Compute) for m in model.modules())


def _has(block: nn.Module, path: str) -> bool:
    try:
        return isinstance(block.get_submodule(path), nn.Linear)
    except AttributeError:
        return False
