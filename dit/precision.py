"""How a Next-DiT's weights are stored and computed: the dtype plan, fp8 storage, the fp16-safe path.

This module alone decides a model's precision (``apply_plan``; it also sets ``compute_dtype``).

Plans (the `weight_dtype` choices of NextDiTLoader, ``WEIGHT_DTYPES``):
- auto / bf16 / fp16 / fp32: every weight stored and computed in that dtype (``auto``: the rule of
  the pack's ``dtypes`` module; the DiT is fp16-safe through the path below);
- fp8_e4m3fn: the big matrices of the repeated blocks (qkv, out, w1-3, adaLN) are stored in fp8
  with one fp32 scale per output row and computed in the `auto` dtype of the device; everything
  small (embedders, final layer, norms, biases) stays in that compute dtype. Halves the DiT's
  memory again (3.5 GB for NewBie) at a small accuracy cost.

Tolerances measured against fp32 by tests/test_loaders.py (max |a-b| / max |b| of one forward of
random official-layout weights): bf16 <= 0.03, fp8_e4m3fn (row-scaled) <= 0.1.

The fp16-safe path (any plan computing in fp16): fp16 tops out at 65504. In this family the
residual stream grows far beyond that in the late blocks, the Gemma features fed to `cap_embedder`
(pre-final-norm hidden states) carry outliers of the same size, and silu(w1 x) * (w3 x) can exceed
it too; a naive fp16 forward turns these into inf and then NaN (black images; ComfyUI issue #8528).
So:
- the model's activations run in fp32 (``compute_dtype`` fp32): the residual stream, every norm,
  RoPE, the embedders and the final layer (all small next to the blocks' matrices), whose weights
  are stored in fp32;
- the Linear layers of the repeated blocks keep fp16 weights and multiply in fp16 (the expensive
  part: > 98% of the FLOPs), with their inputs brought into fp16 range:
  * `attention.out`, `feed_forward.w1/w2/w3` and `adaLN_modulation.1` return fp32: each input row
    is divided by a power of two that puts its largest magnitude at or below `_ROW_TARGET`,
    multiplied in fp16, and the scale is undone in fp32 (exact: a power of two, and a row scale
    commutes with the product). So the SwiGLU product silu(w1 x) * (w3 x) is formed in fp32 and
    w2 sees it scaled into range;
  * `attention.qkv` returns fp16 (its input is normalised), so q/k/v and the attention (SDPA)
    stay in fp16.
Block weights stored in fp8 are dequantised to fp16 per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import dtypes
from .model import repeated_blocks
from .params import BLOCK_LISTS

WEIGHT_DTYPES = dtypes.WEIGHT_DTYPES
FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8).max   # 448
# Key prefixes of the repeated blocks, whose Linear weights the fp8 plan stores in fp8 (over 99%
# of the weights).
FP8_MODULES = tuple(f"{name}." for name in BLOCK_LISTS)


@dataclass(frozen=True)
class DtypePlan:
    """How a model is stored and run: `compute` for activations and every non-fp8 weight."""

    compute: torch.dtype
    fp8: bool = False

    def storage(self, key: str) -> torch.dtype:
        """Dtype a weight is stored in (fp8 only for block Linear weights under the fp8 plan)."""
        return FP8 if self.fp8 and is_fp8_weight(key) else self.compute


def is_fp8_weight(key: str) -> bool:
    """Block Linear weights: 2-D `.weight` keys under FP8_MODULES (norm weights are 1-D, not here)."""
    return key.startswith(FP8_MODULES) and key.endswith(".weight") and "norm" not in key.rsplit(".", 2)[-2]


def resolve(name: str, device: torch.device | str) -> DtypePlan:
    """The plan for a `weight_dtype` name on `device`; ValueError lists the allowed names."""
    if name == "fp8_e4m3fn":
        return DtypePlan(dtypes.auto_dtype(device, fp16_safe=True), fp8=True)
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype {name!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    return DtypePlan(dtypes.resolve(name, device, fp16_safe=True))


def storage_dtype(plan: DtypePlan, key: str) -> torch.dtype:
    """The dtype one official key is stored in under ``plan``: the fp16-safe path keeps everything
    but the block matrices in fp32 (no overflow there)."""
    if plan.compute == torch.float16 and not fp16_block_weight(key):
        return torch.float32
    return plan.storage(key)


def apply_plan(model: nn.Module, plan: DtypePlan) -> nn.Module:
    """Set a loaded model's compute dtype for ``plan`` (the fp16-safe path for fp16); returns it."""
    model.compute_dtype = plan.compute
    if plan.compute == torch.float16:
        make_fp16_safe(model)
    return model


# ---- fp8 storage -------------------------------------------------------------------------------

def quantize_fp8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight (out, in) -> (fp8 weight (out, in), fp32 scale (out,)) with weight ~ fp8 * scale.

    One scale per output row maps the row's largest magnitude to fp8's largest (448), so small
    weights (typically ~0.02) land in fp8's normal range instead of its coarse subnormals.
    Weights already in fp8 are kept as they are (scale 1).
    """
    if weight.dtype == FP8:
        return weight, torch.ones(weight.shape[0], dtype=torch.float32, device=weight.device)
    w = weight.float()
    scale = (w.abs().amax(dim=1) / _FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    return (w / scale[:, None]).to(FP8), scale


class FP8Linear(nn.Linear):
    """nn.Linear whose weight is stored in fp8 with a per-row scale and upcast in forward.

    y = (x @ W8^T) * scale + bias, with W8 cast to x's dtype: the row scale commutes with the
    product, so it is applied to the (small) output instead of the (large) weight.
    `dequantized_weight(dtype)` gives the effective weight for code that needs it (e.g. merging).
    """

    weight_scale: Tensor

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]


def make_fp8_linears(model: nn.Module) -> list[str]:
    """Turn the Linear modules holding fp8 weights into FP8Linear (in place, meta-safe: only the
    class changes and a `weight_scale` buffer is added). Returns the converted module names."""
    names = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear and is_fp8_weight(f"{name}.weight"):
            module.__class__ = FP8Linear
            module.register_buffer("weight_scale", torch.ones(module.out_features, device=module.weight.device))
            names.append(name)
    return names


# ---- the fp16-safe path ------------------------------------------------------------------------

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


class _Fp16Dequantized(_Fp16Compute):
    """Mixin for a Linear whose weight is stored packed (`dequantized_weight(dtype)`, e.g. GGUF blocks)."""

    def _fp16_weight(self) -> Tensor:
        return self.dequantized_weight(torch.float16)


_FP16_PACKED: dict[type, type] = {}


def _fp16_class(cls: type) -> type:
    """The fp16-compute variant of a block Linear class (made once for a packed-weight class)."""
    if issubclass(cls, FP8Linear):
        return Fp16FP8Linear
    if not hasattr(cls, "dequantized_weight"):
        return Fp16Linear
    if cls not in _FP16_PACKED:
        _FP16_PACKED[cls] = type(f"Fp16{cls.__name__}", (_Fp16Dequantized, cls), {})
    return _FP16_PACKED[cls]


def make_fp16_safe(model: nn.Module) -> nn.Module:
    """Switch a NextDiT to the fp16-safe path, in place; returns ``model``. Idempotent.

    The block Linears of `_FP32_OUT` become fp16-compute layers (weights stored in fp16, or kept in
    fp8); every other parameter (biases included) becomes fp32, and `model.compute_dtype` fp32.
    """
    fp16_weights = set()
    for block in repeated_blocks(model):
        for path, out_fp32 in _FP32_OUT.items():
            if not _has(block, path):      # context refiner blocks have no adaLN
                continue
            linear = block.get_submodule(path)
            if not isinstance(linear, _Fp16Compute):
                linear.__class__ = _fp16_class(type(linear))
            linear.out_fp32 = out_fp32
            if linear.weight.element_size() > 1:          # fp8 stays fp8
                linear.weight.data = linear.weight.data.to(torch.float16)
            fp16_weights.add(id(linear.weight))
    for param in model.parameters():
        if id(param) not in fp16_weights and param.is_floating_point() and param.dtype != torch.float32:
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
