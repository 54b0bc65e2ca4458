"""Weight dtype policy, and fp8 (e4m3fn) weight storage for linear layers.

Names (the `weight_dtype` choices of NextDiTLoader): auto, bf16, fp16, fp32, fp8_e4m3fn.
- auto: bf16 on a GPU that supports it, fp16 on a GPU without bf16, fp32 on the CPU (DESIGN §4b).
- bf16/fp16/fp32: every weight stored in that dtype, activations computed in it too.
- fp8_e4m3fn: the big matrices of the transformer blocks (qkv, out, w1-3, adaLN) are stored in fp8
  with one fp32 scale per output row, and computed in the `auto` dtype of the device (bf16 on a
  GPU, fp32 on the CPU); everything small (embedders, final layer, norms, biases) stays in that
  compute dtype. Halves the DiT's memory again (3.5 GB for NewBie) at a small accuracy cost.

Tolerances measured against fp32 by tests/test_loaders.py (max |a-b| / max |b| of one forward of
random official-layout weights): bf16 <= 0.03, fp8_e4m3fn (row-scaled) <= 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn")
_NAMED = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8).max   # 448
# Modules whose Linear weights are stored in fp8: the repeated blocks (over 99% of the weights).
FP8_MODULES = ("layers.", "noise_refiner.", "context_refiner.")


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


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a GPU that supports it, fp16 on a GPU without bf16, fp32 on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type in ("xpu", "mps"):
        return torch.bfloat16 if device.type == "xpu" else torch.float16
    return torch.float32


def resolve(name: str, device: torch.device | str) -> DtypePlan:
    """The plan for a `weight_dtype` name on `device`; ValueError lists the allowed names."""
    if name == "auto":
        return DtypePlan(auto_dtype(device))
    if name == "fp8_e4m3fn":
        return DtypePlan(auto_dtype(device), fp8=True)
    if name in _NAMED:
        return DtypePlan(_NAMED[name])
    raise ValueError(f"weight dtype {name!r} is not one of {', '.join(WEIGHT_DTYPES)}")


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
