"""The NAG combination of two attention outputs (Chen et al. 2025, "Normalized Attention Guidance:
Universal Negative Guidance for Diffusion Models", arXiv 2505.21179, eq. 5-7).

For each query token, with Z+ the attention output over the positive caption and Z− the one over
the negative caption (heads concatenated, before the output projection):

    Z̃ = s·Z+ − (s − 1)·Z−              extrapolation; s = 1 is no guidance (Z̃ = Z+)
    r = ‖Z̃‖₁ / ‖Z+‖₁                   over the token's features
    Ẑ = Z̃ · min(r, τ) / r              the L1 norm of the result is at most τ times Z+'s
    Z = α·Ẑ + (1 − α)·Z+

The official code (github.com/ChenDarYen/Normalized-Attention-Guidance) takes both norms per token
over the last axis of the heads-concatenated output, as here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def nag_combine(z_pos: Tensor, z_neg: Tensor, scale: float, tau: float, alpha: float) -> Tensor:
    """Z from Z+ and Z− of shape (..., features), computed in fp32 (or fp64), returned in Z+'s dtype."""
    dtype = torch.promote_types(z_pos.dtype, torch.float32)
    pos, neg = z_pos.to(dtype), z_neg.to(dtype)
    guided = pos * scale - neg * (scale - 1.0)
    norm_pos = pos.abs().sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    ratio = guided.abs().sum(-1, keepdim=True) / norm_pos
    guided = torch.where(ratio > tau, guided * (tau / ratio), guided)
    return (alpha * guided + (1.0 - alpha) * pos).to(z_pos.dtype)
