"""Next-DiT building blocks. Attribute names are the official state-dict names (the module names of
`models/model.py` in github.com/NewBieAI-Lab/NewBie-image-Exp0.1; docs/newbie-image.md lists them).

All blocks work on packed tokens: (T, C) rows of several samples back to back, with a
`Segments` telling which rows belong to which sample (see ops.py). Per-sample conditioning
vectors are (B, adaln_dim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .params import NextDiTParams
from .ops import Segments, apply_rope, attention, timestep_embedding


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim (statistics in fp32), output in x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # One call: F.rms_norm computes the statistics (and the weight product) in fp32 for half
        # inputs, then rounds once to x's dtype; no fp32 copy of x round-trips through memory.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def _modulation(in_dim: int, out_dim: int) -> nn.Sequential:
    """SiLU -> Linear, so the Linear is `<name>.1` as in the official keys."""
    return nn.Sequential(nn.SiLU(), nn.Linear(in_dim, out_dim, bias=True))


class JointAttention(nn.Module):
    """Self-attention with GQA, per-head q/k RMSNorm before RoPE, no biases."""

    def __init__(self, p: NextDiTParams):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = p.n_heads, p.n_kv_heads, p.head_dim
        self.qkv = nn.Linear(p.dim, (p.n_heads + 2 * p.n_kv_heads) * p.head_dim, bias=False)
        self.out = nn.Linear(p.n_heads * p.head_dim, p.dim, bias=False)
        self.q_norm = RMSNorm(p.head_dim, p.norm_eps)
        self.k_norm = RMSNorm(p.head_dim, p.norm_eps)

    def forward(self, x: Tensor, segments: Segments, cos: Tensor, sin: Tensor, attend=attention) -> Tensor:
        """x: (T, dim); cos/sin: (T, head_dim/2) fp32; attend(q, k, v, segments): the attention itself
        (the model's seam may replace it). Returns (T, dim)."""
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = apply_rope(self.q_norm(q.unflatten(-1, (self.n_heads, self.head_dim))), cos, sin)    # (T, H, D)
        k = apply_rope(self.k_norm(k.unflatten(-1, (self.n_kv_heads, self.head_dim))), cos, sin)  # (T, Hkv, D)
        v = v.unflatten(-1, (self.n_kv_heads, self.head_dim))
        return self.out(attend(q, k, v, segments))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class JointTransformerBlock(nn.Module):
    """Sandwich-norm block. Modulated: scale-only adaLN on the inputs, tanh gates on the residuals.

    adaLN_modulation(c) chunks, in order: scale_msa, gate_msa, scale_mlp, gate_mlp (no shifts).
    Unmodulated (context refiner): the same without scales and gates.
    """

    def __init__(self, p: NextDiTParams, modulated: bool):
        super().__init__()
        self.attention = JointAttention(p)
        self.feed_forward = FeedForward(p.dim, p.ffn_dim)
        self.attention_norm1 = RMSNorm(p.dim, p.norm_eps)
        self.attention_norm2 = RMSNorm(p.dim, p.norm_eps)
        self.ffn_norm1 = RMSNorm(p.dim, p.norm_eps)
        self.ffn_norm2 = RMSNorm(p.dim, p.norm_eps)
        self.adaLN_modulation = _modulation(p.adaln_dim, 4 * p.dim) if modulated else None

    def forward(self, x: Tensor, segments: Segments, cos: Tensor, sin: Tensor, c: Tensor | None = None,
                attend=attention) -> Tensor:
        """x: (T, dim) packed tokens; c: (B, adaln_dim) for modulated blocks, else None; attend: the
        attention function (JointAttention)."""
        if self.adaLN_modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), segments, cos, sin))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        # Per-sample (B, dim) factors, broadcast over each sample's tokens by `segments.scale`.
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=-1)
        h = self.attention(segments.scale(self.attention_norm1(x), 1 + scale_msa), segments, cos, sin, attend)
        x = x + segments.scale(self.attention_norm2(h), torch.tanh(gate_msa))
        h = self.feed_forward(segments.scale(self.ffn_norm1(x), 1 + scale_mlp))
        return x + segments.scale(self.ffn_norm2(h), torch.tanh(gate_mlp))


class TimestepEmbedder(nn.Module):
    """Scalar per sample -> fp32 sinusoid (cos first) -> Linear -> SiLU -> Linear.

    Used for time (`t_embedder`) and, on guidance-distilled weights, the guidance scale
    (`guidance_embedder`); both values go in unscaled.
    """

    def __init__(self, out_dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """t: (B,) -> (B, out_dim) in `dtype`."""
        return self.mlp(timestep_embedding(t, self.freq_dim).to(dtype))


class FinalLayer(nn.Module):
    """LayerNorm (no affine, eps 1e-6) -> x * (1 + scale(c)) -> Linear to patch pixels."""

    def __init__(self, p: NextDiTParams):
        super().__init__()
        self.adaLN_modulation = _modulation(p.adaln_dim, p.dim)
        self.linear = nn.Linear(p.dim, p.patch_size * p.patch_size * p.in_channels, bias=True)

    def forward(self, x: Tensor, segments: Segments, c: Tensor) -> Tensor:
        """x: (T, dim) image tokens; c: (B, adaln_dim). Returns (T, p*p*C)."""
        scale = 1 + self.adaLN_modulation(c)
        return self.linear(segments.scale(F.layer_norm(x, (x.shape[-1],), eps=1e-6), scale))
