"""QuantLinear: an nn.Linear whose weight stays in a ggml block format in memory.

The weight parameter holds the raw blocks (uint8, rows of blocks as the GGUF file stores them,
no gradient); each forward dequantises it on the input's device, in float32 and then the input's
dtype (``quant.blocks.dequantize``), multiplies, and drops the dequantised copy. So only one
layer's weight ever exists in float at a time, and the model's memory is the file's.

Because the blocks are an ordinary parameter, moving the model (``.to``), block streaming and
host memory managers move them like any weight; ``.to(dtype)`` leaves them alone (not floating
point). Forward hooks (LoRA) see the usual (input, output) of a Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import dequantize


class QuantLinear(nn.Linear):
    """y = x W^T + b with W dequantised from ``weight`` (raw blocks of format ``qtype``) per call."""

    qtype: str

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype, x.device), bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
        packed = self.weight if device is None else self.weight.to(device)
        return dequantize(packed, self.qtype, (self.out_features, self.in_features), dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, qtype={self.qtype}"


def make_quant_linear(linear: nn.Linear, qtype: str, raw_shape: tuple[int, ...]) -> QuantLinear:
    """Turn ``linear`` into a QuantLinear in place (meta-safe: its weight becomes an empty uint8
    parameter of ``raw_shape`` on the same device, to be filled by ``load_state_dict(assign=True)``)."""
    linear.__class__ = QuantLinear
    linear.qtype = qtype
    linear.weight = nn.Parameter(torch.empty(raw_shape, dtype=torch.uint8, device=linear.weight.device),
                                 requires_grad=False)
    return linear


def packed_bytes(model: nn.Module) -> int:
    """Bytes of the raw blocks of every QuantLinear of ``model``."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, QuantLinear))
