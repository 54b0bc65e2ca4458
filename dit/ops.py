"""Pure tensor functions of the Next-DiT: time sinusoid, 3-axis RoPE, token packing, attention.

Shapes use B = batch, T = packed tokens of all samples, H = heads, D = head_dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoid of a scalar per sample, computed in fp32.

    t: (B,) any float (data-time in [0, 1] or a guidance scale, never rescaled).
    Returns (B, dim) float32 laid out as [cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})],
    f_i = exp(-ln(max_period) i / h), h = dim // 2 (the official order: cos first).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def rope_angles(positions: Tensor, axes_dims: tuple[int, ...], theta: float) -> Tensor:
    """Rotation angles of the 3-axis RoPE, in fp32.

    positions: (T, n_axes) integer positions (caption index, row, column).
    Returns (T, sum(axes_dims) // 2): per axis a of width d, the angles pos_a * theta^(-2k/d),
    k = 0..d/2-1, axes concatenated in order. Frequencies are computed in float64 like the
    official tables, then the products are rounded to fp32.
    """
    angles = []
    for axis, d in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d))
        angles.append((positions[:, axis].to(torch.float64)[:, None] * freqs[None]).float())
    return torch.cat(angles, dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2k], x[2k+1]) by the angles behind cos/sin (complex-multiply style).

    x: (T, H, D) any float dtype; cos, sin: (T, D // 2) float32. Math in fp32; returns x's dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))        # (T, H, D/2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None], sin[:, None]           # broadcast over heads
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


@dataclass(frozen=True)
class Segments:
    """Variable-length sequences stored back to back along dim 0 (no padding anywhere).

    lengths: tokens per sample, in batch order. `lengths_t` is the same on the tokens' device.
    """

    lengths: tuple[int, ...]
    lengths_t: Tensor

    @classmethod
    def of(cls, lengths: list[int] | tuple[int, ...], device: torch.device) -> "Segments":
        return cls(tuple(int(n) for n in lengths), torch.tensor(lengths, dtype=torch.long, device=device))

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def uniform(self) -> bool:
        return len(set(self.lengths)) == 1

    def scale(self, x: Tensor, per_sample: Tensor) -> Tensor:
        """x (T, C) times per-sample vectors (B, C), each broadcast over its sample's tokens."""
        if self.uniform:
            return (x.unflatten(0, (len(self.lengths), -1)) * per_sample[:, None]).flatten(0, 1)
        return x * per_sample.repeat_interleave(self.lengths_t, dim=0, output_size=self.total)


def attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments) -> Tensor:
    """Full (non-causal) softmax attention within each sample's own tokens.

    q: (T, H, D); k, v: (T, Hkv, D) with H a multiple of Hkv (GQA: query head h uses kv head
    h // (H / Hkv)). Scale 1/sqrt(D). Returns (T, H * D).
    One batched SDPA call when all samples have the same length, else one call per sample.
    """
    if segments.uniform:
        b = len(segments.lengths)
        out = _sdpa(*(x.unflatten(0, (b, -1)).transpose(1, 2) for x in (q, k, v)))  # (B, H, L, D)
        return out.transpose(1, 2).flatten(0, 1).flatten(1)
    outs = []
    for qs, ks, vs in zip(*(x.split(segments.lengths) for x in (q, k, v))):
        outs.append(_sdpa(*(x.transpose(0, 1)[None] for x in (qs, ks, vs)))[0].transpose(0, 1))
    return torch.cat(outs).flatten(1)


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA over (B, heads, L, D) with grouped kv heads.

    The kv heads are repeated explicitly (tiny next to the attention itself): SDPA's `enable_gqa`
    is honoured only by the flash backend and would send fp32 CUDA or older torch to the math
    kernel, which materialises the L x L scores.
    """
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v)


def pad_to_patches(x: Tensor, p: int) -> Tensor:
    """(B, C, h, w) with h and w padded up to multiples of p, at the bottom and right, wrapping
    around (circular), as core ComfyUI's Lumina model pads (``comfy.ldm.common_dit.pad_to_patch_size``);
    the caller crops the output back to (h, w)."""
    pad_h, pad_w = -x.shape[2] % p, -x.shape[3] % p
    return x if not (pad_h or pad_w) else torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="circular")


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C): row-major patches, each flattened as (pH, pW, C)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)


def unpatchify(tokens: Tensor, p: int, h: int, w: int) -> Tensor:
    """Inverse of `patchify`: (B, (h/p)(w/p), p*p*C) -> (B, C, h, w)."""
    b = tokens.shape[0]
    grid = tokens.view(b, h // p, w // p, p, p, -1)           # (B, rows, cols, pH, pW, C)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h, w)


@dataclass(frozen=True)
class TokenLayout:
    """Where every real token of a batch sits in the packed joint sequence.

    Per sample the joint sequence is [caption tokens (Lc_i) ; image tokens (N)], samples back to
    back. Caption token j of sample i has RoPE position (j, 0, 0); image patch (r, c) has
    (Lc_i, r, c), so positions depend only on the sample's own caption length.
    """

    captions: Segments     # caption tokens only (context refiner)
    images: Segments       # image tokens only (noise refiner)
    joint: Segments        # caption + image per sample (main layers)
    cap_index: Tensor      # (sum Lc,) rows of the joint sequence that hold caption tokens
    img_index: Tensor      # (B*N,) rows of the joint sequence that hold image tokens
    cos: Tensor            # (T, D/2) fp32 RoPE of the joint sequence
    sin: Tensor

    @classmethod
    def build(cls, cap_lens: list[int], rows: int, cols: int, axes_dims: tuple[int, ...], theta: float,
              device: torch.device) -> "TokenLayout":
        n_img = rows * cols
        positions, cap_index, img_index, start = [], [], [], 0
        grid = torch.stack(torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device),
                                          indexing="ij"), dim=-1).flatten(0, 1)           # (N, 2) row-major
        for lc in cap_lens:
            cap_pos = torch.zeros(lc, 3, dtype=torch.long, device=device)
            cap_pos[:, 0] = torch.arange(lc, device=device)
            img_pos = torch.cat([torch.full((n_img, 1), lc, dtype=torch.long, device=device), grid], dim=1)
            positions += [cap_pos, img_pos]
            cap_index.append(torch.arange(start, start + lc, device=device))
            img_index.append(torch.arange(start + lc, start + lc + n_img, device=device))
            start += lc + n_img
        angles = rope_angles(torch.cat(positions), axes_dims, theta)
        return cls(
            captions=Segments.of(cap_lens, device),
            images=Segments.of([n_img] * len(cap_lens), device),
            joint=Segments.of([lc + n_img for lc in cap_lens], device),
            cap_index=torch.cat(cap_index), img_index=torch.cat(img_index),
            cos=torch.cos(angles), sin=torch.sin(angles),
        )

    def rope(self, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """cos/sin of the joint sequence, or of the rows `index` (a refiner's tokens)."""
        if index is None:
            return self.cos, self.sin
        return self.cos[index], self.sin[index]

    def join(self, cap: Tensor, img: Tensor) -> Tensor:
        """Packed caption tokens (sum Lc, C) and image tokens (B*N, C) -> joint sequence (T, C)."""
        joint = cap.new_empty(self.joint.total, cap.shape[1])
        joint[self.cap_index] = cap
        joint[self.img_index] = img
        return joint


def pack_captions(cap_feats: Tensor, cap_mask: Tensor) -> tuple[Tensor, list[int]]:
    """Drop caption padding: (B, L, C) + (B, L) mask -> (sum Lc, C) real tokens and [Lc_i].

    The mask may be bool or 0/1 numbers (ComfyUI's `attention_mask`); it must mark real tokens first
    and padding at the end (as the text encoders emit).
    """
    lengths = cap_mask.bool().sum(dim=1)
    prefix = torch.arange(cap_mask.shape[1], device=cap_mask.device)[None] < lengths[:, None]
    if not torch.equal(prefix, cap_mask.bool()):
        raise ValueError("cap_mask must mark real caption tokens first and padding only at the end "
                         "(right padding); got a mask with gaps or left padding")
    return cap_feats[prefix], lengths.tolist()
