"""The rectified-flow training pair, as the official NewBie training builds it.

Conventions (official ``transport/path.py``, the same as sampling's ``sampling/schedule.py``):
data-time t runs from 0 (noise) to 1 (data), x_t = t·data + (1 − t)·noise and the model learns
the velocity data − noise with a mean squared error.

Time sampling (docs/newbie-image.md §10: official ``transport/transport.py`` with
``snr_type=lognorm``, the setting of the released ``scripts/run_1024_finetune.sh``):
t = sigmoid(u), u ~ N(0, 1) (logit-normal), then shifted towards the noise end by the resolution
shift of Lumina-Image-2.0 / FLUX,
σ ← s·σ / (1 + (s − 1)·σ) on σ = 1 − t with s = exp(μ); the official training fixed μ = 1.15
(its ``seq_len`` of 4096 tokens at 1024²), so s = e^1.15 ≈ 3.16. In data-time that is
``shift_time(t, s)``, the shift sampling uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sampling.schedule import shift_time

# exp(1.15): the official training's time shift (see the module docstring).
OFFICIAL_TIME_SHIFT = math.exp(1.15)


def logit_normal_times(count: int, shift: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """``count`` data-times t = shift_time(sigmoid(u), shift), u ~ N(0, 1); float32 on the CPU."""
    t = torch.sigmoid(torch.randn(count, generator=generator))
    return t if shift == 1.0 else shift_time(t, shift)   # elementwise on a tensor


def noised(data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = t·data + (1 − t)·noise, t (B,) broadcast over the latent's other axes."""
    t = t.view(-1, *([1] * (data.ndim - 1))).to(data.dtype)
    return t * data + (1 - t) * noise


def velocity_loss(prediction: Tensor, data: Tensor, noise: Tensor) -> Tensor:
    """Mean squared error against the velocity data − noise, per sample (B,), in float32."""
    return (prediction.float() - (data - noise).float()).pow(2).flatten(1).mean(dim=1)
