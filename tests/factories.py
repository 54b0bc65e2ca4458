"""Shared test fixtures: tiny Next-DiT configs, random weights in the official key layout, checkpoints.

Owner: model engineer. Other areas may ADD functions at the end of this file, in a section
marked with their area; do not change the functions above that section.

The official key table below is written from docs/newbie-image.md §2 (not from our
module), so `NextDiT.load_state_dict(official_state_dict(p))` also checks our module names.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import torch

from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import NextDiTParams

_TINY = dict(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=80, cap_dim=40, clip_dim=32)


def tiny_params(**overrides) -> NextDiTParams:
    """Tiny NewBie-style config (clip path on): dim 48, 4 heads of 12 (RoPE axes 4/4/4), 2 kv heads,
    2 layers + 2+2 refiners, cap_dim 40, clip_dim 32. `clip_dim=None` gives a Lumina-2 shape."""
    return NextDiTParams(**{**_TINY, **overrides})


def newbie_width_params(**overrides) -> NextDiTParams:
    """The real NewBie widths (dim 2304, 24/8 heads, cap 2560, clip 1024) with 2 layers and a
    narrower feed-forward (default 2304 instead of 9216) so tests stay light (~0.3 GB fp32)."""
    base = dict(dim=2304, n_layers=2, n_heads=24, n_kv_heads=8, ffn_dim=2304, cap_dim=2560, clip_dim=1024)
    return NextDiTParams(**{**base, **overrides})


def _block_shapes(p: NextDiTParams, prefix: str, modulated: bool) -> dict[str, tuple[int, ...]]:
    hd = p.head_dim
    shapes = {
        f"{prefix}.attention.qkv.weight": ((p.n_heads + 2 * p.n_kv_heads) * hd, p.dim),
        f"{prefix}.attention.out.weight": (p.dim, p.n_heads * hd),
        f"{prefix}.attention.q_norm.weight": (hd,),
        f"{prefix}.attention.k_norm.weight": (hd,),
        f"{prefix}.feed_forward.w1.weight": (p.ffn_dim, p.dim),
        f"{prefix}.feed_forward.w2.weight": (p.dim, p.ffn_dim),
        f"{prefix}.feed_forward.w3.weight": (p.ffn_dim, p.dim),
        f"{prefix}.attention_norm1.weight": (p.dim,),
        f"{prefix}.attention_norm2.weight": (p.dim,),
        f"{prefix}.ffn_norm1.weight": (p.dim,),
        f"{prefix}.ffn_norm2.weight": (p.dim,),
    }
    if modulated:
        shapes[f"{prefix}.adaLN_modulation.1.weight"] = (4 * p.dim, p.adaln_dim)
        shapes[f"{prefix}.adaLN_modulation.1.bias"] = (4 * p.dim,)
    return shapes


def official_shapes(p: NextDiTParams, norm_final: bool = False) -> dict[str, tuple[int, ...]]:
    """Every key of an official checkpoint for `p` and its shape (docs/newbie-image.md §2)."""
    a, patch = p.adaln_dim, p.patch_size * p.patch_size * p.in_channels
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (p.dim, patch), "x_embedder.bias": (p.dim,),
        "t_embedder.mlp.0.weight": (a, p.t_embed_freq_dim), "t_embedder.mlp.0.bias": (a,),
        "t_embedder.mlp.2.weight": (a, a), "t_embedder.mlp.2.bias": (a,),
        "cap_embedder.0.weight": (p.cap_dim,),
        "cap_embedder.1.weight": (p.dim, p.cap_dim), "cap_embedder.1.bias": (p.dim,),
        "final_layer.adaLN_modulation.1.weight": (p.dim, a), "final_layer.adaLN_modulation.1.bias": (p.dim,),
        "final_layer.linear.weight": (patch, p.dim), "final_layer.linear.bias": (patch,),
    }
    if p.clip_dim is not None:
        shapes.update({
            "clip_text_pooled_proj.0.weight": (p.clip_dim,),
            "clip_text_pooled_proj.1.weight": (p.clip_dim, p.clip_dim),
            "clip_text_pooled_proj.1.bias": (p.clip_dim,),
            "time_text_embed.1.weight": (a, a + p.clip_dim), "time_text_embed.1.bias": (a,),
        })
    if p.guidance_embed:
        shapes.update({
            "guidance_embedder.mlp.0.weight": (a, p.t_embed_freq_dim), "guidance_embedder.mlp.0.bias": (a,),
            "guidance_embedder.mlp.2.weight": (a, a), "guidance_embedder.mlp.2.bias": (a,),
        })
    for i in range(p.n_refiner_layers):
        shapes.update(_block_shapes(p, f"noise_refiner.{i}", modulated=True))
        shapes.update(_block_shapes(p, f"context_refiner.{i}", modulated=False))
    for i in range(p.n_layers):
        shapes.update(_block_shapes(p, f"layers.{i}", modulated=True))
    if norm_final:
        shapes["norm_final.weight"] = (p.dim,)   # present in real files, unused by the forward
    return shapes


def official_state_dict(params: NextDiTParams, seed: int = 0, norm_final: bool = False,
                        dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights under the official key names, chosen so that a wrong formula shows:
    matrices ~ N(0, 1/fan_in) (activations stay O(1)), biases ~ N(0, 0.1^2), every norm weight
    uniform in [0.5, 1.5], adaLN / gates / guidance embedder all non-zero."""
    out = {}
    for key, shape in official_shapes(params, norm_final).items():
        # One generator per key: a tensor depends only on (seed, key, shape), so configs that differ
        # by optional modules (clip, guidance) share every other weight.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        if len(shape) == 2:
            w = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        elif key.endswith(".bias"):
            w = 0.1 * torch.randn(shape, generator=gen)
        else:                                              # RMSNorm weight
            w = 0.5 + torch.rand(shape, generator=gen)
        out[key] = w.to(dtype)
    return out


def random_dit(params: NextDiTParams, seed: int = 0) -> NextDiT:
    """A NextDiT (fp32, CPU, eval mode) holding `official_state_dict(params, seed)`."""
    return dit_from_state_dict(params, official_state_dict(params, seed))


def dit_from_state_dict(params: NextDiTParams, state_dict: dict[str, torch.Tensor]) -> NextDiT:
    """A NextDiT (eval mode, no grad) built on meta and holding exactly these tensors (assign=True)."""
    with torch.device("meta"):
        model = NextDiT(params)
    model.load_state_dict(state_dict, assign=True)
    return model.eval().requires_grad_(False)


def write_dit_checkpoint(path: str | Path, params: NextDiTParams, seed: int = 0, prefix: str = "module.",
                         fmt: str = "safetensors", norm_final: bool = True,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Write `official_state_dict` to `path` with every key prefixed by `prefix` (a DDP-style
    training file by default), including the unused `norm_final.weight` as real files do.
    fmt: "safetensors" or "pt" (a plain torch.save of the dict). Returns the written state dict
    WITHOUT prefix and without norm_final, i.e. exactly what a correct loader must produce."""
    sd = official_state_dict(params, seed, norm_final=norm_final, dtype=dtype)
    stored = {prefix + k: v for k, v in sd.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(stored, str(path))
    elif fmt == "pt":
        torch.save(stored, str(path))
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'pt'; got {fmt!r}")
    sd.pop("norm_final.weight", None)
    return sd


def random_inputs(params: NextDiTParams, cap_lens: list[int], latent_hw: tuple[int, int] = (8, 8),
                  seed: int = 0, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for len(cap_lens) samples: captions right-padded to max(cap_lens) (or pad_to),
    padding filled with large garbage (it must never matter). Keys: x, t, cap_feats, cap_mask,
    clip_pooled (None for clip_dim None)."""
    gen = torch.Generator().manual_seed(seed)
    b, length = len(cap_lens), pad_to or max(cap_lens)
    mask = torch.arange(length)[None] < torch.tensor(cap_lens)[:, None]
    feats = torch.randn(b, length, params.cap_dim, generator=gen)
    feats = torch.where(mask[..., None], feats, 1e3 * torch.randn(b, length, params.cap_dim, generator=gen))
    clip = torch.randn(b, params.clip_dim, generator=gen) if params.clip_dim is not None else None
    return dict(
        x=torch.randn(b, params.in_channels, *latent_hw, generator=gen),
        t=torch.rand(b, generator=gen),
        cap_feats=feats, cap_mask=mask, clip_pooled=clip,
    )


def with_guidance(params: NextDiTParams) -> NextDiTParams:
    """`params` with the guidance embedder switched on."""
    return dataclasses.replace(params, guidance_embed=True)
