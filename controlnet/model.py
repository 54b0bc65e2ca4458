"""A control network for a Next-DiT of any width: spatial control (edges, outlines, depth) from a
control image.

Design (the Z-Image "Fun ControlNet Union" idea of VideoX-Fun, which ComfyUI core loads in
``comfy/ldm/lumina/controlnet.py``, made for the Next-DiT's packed tokens):

    control image -> VAE -> normalised latent -> patchify -> control_x_embedder        -> ctrl (B*N, dim)
    joint tokens entering joint layer 0, image rows + ctrl                             -> stream (T, dim)
    stream -> control_blocks.i (Next-DiT joint blocks, modulated by the DiT's adaLN c,
              attending over caption + control tokens with the DiT's RoPE)             -> stream
    control_projections.i(stream's image rows) * strength -> ADDED to the image rows of the output
              of joint layer ``layers[i]``

The projections start at zero, so a fresh network changes nothing; the blocks may start as copies
of the DiT's first joint layers (training/controlnet_training.py).

File layout (safetensors; shapes inferred from the file, nothing else is needed to load it):

    control_x_embedder.weight            (dim, p*p*16)   the patch embedding of the control latent
    control_x_embedder.bias              (dim,)
    control_blocks.{i}.<block keys>      a modulated Next-DiT joint block each: attention.qkv,
                                         attention.out, attention.q_norm, attention.k_norm,
                                         feed_forward.w1/w2/w3, attention_norm1/2, ffn_norm1/2,
                                         adaLN_modulation.1 (the DiT's own block keys)
    control_projections.{i}.weight       (dim, dim)      zero-initialised output projections
    control_projections.{i}.bias         (dim,)

Metadata (all optional, strings): ``nextdit_controlnet_layers`` ("0,9,18,27": the joint layer each
block's residual is added to; default ``i * n_layers // n_blocks`` for a DiT of n_layers),
``nextdit_controlnet_control`` (what the control images are: "canny", "outline", ...),
``nextdit_controlnet_base`` (fingerprint of the DiT it was trained on), ``nextdit_controlnet_training``.
A NewBie ControlNet trained by anyone on this layout loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..dit.layers import JointTransformerBlock
from ..dit.ops import patchify
from ..dit.params import NextDiTParams

LATENT_CHANNELS = 16


@dataclass(frozen=True)
class ControlNetParams:
    dim: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    n_blocks: int
    patch_size: int = 2
    in_channels: int = LATENT_CHANNELS
    layers: tuple[int, ...] | None = None   # joint layer per block; None: the default rule

    def block_params(self) -> NextDiTParams:
        """The NextDiTParams a control block is built from (caption width unused by a block)."""
        return NextDiTParams(dim=self.dim, n_layers=0, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                             ffn_dim=self.ffn_dim, cap_dim=self.dim, in_channels=self.in_channels,
                             patch_size=self.patch_size)

    def target_layers(self, n_layers: int) -> tuple[int, ...]:
        """The joint layer each block's residual is added to, for a DiT of ``n_layers``."""
        layers = self.layers if self.layers is not None else tuple(i * n_layers // self.n_blocks
                                                                   for i in range(self.n_blocks))
        if len(layers) != self.n_blocks or any(not 0 <= layer < n_layers for layer in layers):
            raise ValueError(f"the ControlNet's target layers {list(layers)} do not fit a Next-DiT of "
                             f"{n_layers} joint layers with {self.n_blocks} control blocks")
        return layers

    @classmethod
    def like(cls, dit_params: NextDiTParams, n_blocks: int, layers: tuple[int, ...] | None = None):
        """Params matching a DiT's width and heads."""
        return cls(dim=dit_params.dim, n_heads=dit_params.n_heads, n_kv_heads=dit_params.n_kv_heads,
                   ffn_dim=dit_params.ffn_dim, n_blocks=n_blocks, patch_size=dit_params.patch_size,
                   in_channels=dit_params.in_channels, layers=layers)

    def mismatch(self, dit_params: NextDiTParams) -> str | None:
        """Why this ControlNet cannot run with a DiT of ``dit_params`` (None: it can)."""
        ours, theirs = self.block_params(), dit_params
        problems = [f"{what} {a} vs the model's {b}" for what, a, b in (
            ("width", ours.dim, theirs.dim), ("heads", ours.n_heads, theirs.n_heads),
            ("kv heads", ours.n_kv_heads, theirs.n_kv_heads), ("patch size", ours.patch_size, theirs.patch_size),
            ("latent channels", ours.in_channels, theirs.in_channels)) if a != b]
        try:
            self.target_layers(theirs.n_layers)
        except ValueError as error:
            problems.append(str(error))
        return "; ".join(problems) or None


class NextDiTControlNet(nn.Module):
    """The control network (module docstring). Submodule names are the file's keys."""

    def __init__(self, params: ControlNetParams, device: torch.device | str | None = None):
        super().__init__()
        self.params = params
        p = params.block_params()
        with torch.device(device) if device is not None else torch.device("cpu"):
            self.control_x_embedder = nn.Linear(p.patch_size * p.patch_size * p.in_channels, p.dim, bias=True)
            self.control_blocks = nn.ModuleList(JointTransformerBlock(p, modulated=True)
                                                for _ in range(params.n_blocks))
            self.control_projections = nn.ModuleList(nn.Linear(p.dim, p.dim, bias=True)
                                                     for _ in range(params.n_blocks))
        if device != "meta":
            for projection in self.control_projections:   # a fresh network adds nothing
                nn.init.zeros_(projection.weight)
                nn.init.zeros_(projection.bias)

    def with_layers(self, layers: tuple[int, ...] | None) -> NextDiTControlNet:
        self.params = replace(self.params, layers=layers)
        return self

    def forward(self, hint: Tensor, joint: Tensor, ctx) -> list[Tensor]:
        """hint: (B, C, h, w) normalised control latent at the sampled latent's size; joint: (T, dim)
        the tokens entering joint layer 0; ctx: the forward's ForwardContext.
        Returns one residual per block, (B*N, dim), for the image rows (strength not applied)."""
        layout, dtype = ctx.layout, joint.dtype
        weight_dtype = self.control_x_embedder.weight.dtype
        ctrl = self.control_x_embedder(patchify(hint.to(weight_dtype), self.params.patch_size).flatten(0, 1))
        stream = joint.index_add(0, layout.img_index, ctrl.to(dtype))
        cos, sin = layout.rope()
        residuals = []
        for block, projection in zip(self.control_blocks, self.control_projections):
            stream = block(stream, layout.joint, cos, sin, ctx.c)
            residuals.append(projection(stream[layout.img_index]))
        return residuals
