"""The Next-DiT (NewBie-image / Lumina-Image-2.0) with the official forward.

The forward follows `NextDiT_CLIP` in `models/model.py` of github.com/NewBieAI-Lab/NewBie-image-Exp0.1
(docs/newbie-image.md states it step by step). Data flow for one batch (every sample keeps only its
real caption tokens; nothing is padded):

    t, guidance  -> sinusoids -> t_embedder (+ guidance_embedder)               -> t_emb (B, A)
    t_emb, clip  -> time_text_embed([t_emb, clip_text_pooled_proj(clip)])       -> c     (B, A)
    captions     -> cap_embedder -> context_refiner x2 (unmodulated)            -> cap   (sum Lc, dim)
    latent       -> patchify -> x_embedder -> noise_refiner x2 (modulated by c) -> img   (B*N, dim)
    [cap ; img] per sample -> layers xN (modulated by c) -> image rows -> final_layer -> unpatchify

A = adaln_dim = min(dim, 1024). Lumina-2 shaped weights (clip_dim None) use c = t_emb, and so do
NewBie weights called without `clip_pooled` (as the official NextDiT_CLIP.forward does; ComfyUI
instead feeds zeros after the projection). Guidance-distilled weights called without `guidance`
add no guidance term.

Everything other code attaches to a NextDiT goes through its seam (``model.seam``, dit/seam.py):
a registry that lists and removes what is attached, and named points in this forward where the
attached entries act (after the caption refiner, around the joint layers, before and after each
joint layer, inside each joint layer's attention, before the final layer). With nothing attached
the forward runs exactly the plain operations. Precision, GGUF blocks and compilation swap module
classes at load time instead (dit/precision.py; dit/quantized.py, whose block Linears become
quant.linear.QuantLinear holding the file's uint8 blocks; dit/compile.py). State-dict keys never change, except under
peft's LoRA training, which replaces the targeted Linears in place (training/lora_training.py).
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import FinalLayer, JointTransformerBlock, RMSNorm, TimestepEmbedder
from .ops import TokenLayout, attention, pack_captions, pad_to_patches, patchify, unpatchify
from .params import BLOCK_LISTS, NextDiTParams
from .seam import ForwardContext, Seam


class NextDiT(nn.Module):
    """Velocity model v(x, t) = data - noise. Submodule names are the official state-dict keys."""

    def __init__(self, params: NextDiTParams, device: torch.device | str | None = None):
        super().__init__()
        p = self.params = params
        self.compute_dtype = torch.float32     # activations' dtype (see dit.precision)
        self.gradient_checkpointing = False    # recompute block activations in backward (training)
        self.seam = Seam(self)                 # everything attached from outside (module docstring)
        self._layout_cache = None
        with torch.device(device) if device is not None else nullcontext():
            self.x_embedder = nn.Linear(p.patch_size * p.patch_size * p.in_channels, p.dim, bias=True)
            self.t_embedder = TimestepEmbedder(p.adaln_dim, p.t_embed_freq_dim)
            self.cap_embedder = nn.Sequential(RMSNorm(p.cap_dim, p.norm_eps), nn.Linear(p.cap_dim, p.dim, bias=True))
            if p.clip_dim is not None:
                self.clip_text_pooled_proj = nn.Sequential(
                    RMSNorm(p.clip_dim, p.norm_eps), nn.Linear(p.clip_dim, p.clip_dim, bias=True))
                self.time_text_embed = nn.Sequential(nn.SiLU(), nn.Linear(p.adaln_dim + p.clip_dim, p.adaln_dim))
            if p.guidance_embed:
                self.guidance_embedder = TimestepEmbedder(p.adaln_dim, p.t_embed_freq_dim)
                nn.init.zeros_(self.guidance_embedder.mlp[2].weight)  # starts as a no-op (distillation init)
                nn.init.zeros_(self.guidance_embedder.mlp[2].bias)
            self.context_refiner = nn.ModuleList(JointTransformerBlock(p, modulated=False)
                                                 for _ in range(p.n_refiner_layers))
            self.noise_refiner = nn.ModuleList(JointTransformerBlock(p, modulated=True)
                                               for _ in range(p.n_refiner_layers))
            self.layers = nn.ModuleList(JointTransformerBlock(p, modulated=True) for _ in range(p.n_layers))
            self.final_layer = FinalLayer(p)

    @property
    def attachments(self):
        """What is attached, name -> entry (read-only; attach and detach through ``self.seam``)."""
        return self.seam.view()

    @property
    def device(self) -> torch.device:
        return self.x_embedder.weight.device

    def forward(self, x: Tensor, t: Tensor, cap_feats: Tensor, cap_mask: Tensor,
                clip_pooled: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        """x: (B, C, h, w) normalised latent; t: (B,) data-time (0 noise, 1 clean);
        cap_feats: (B, L, cap_dim); cap_mask: (B, L) bool, real tokens first; clip_pooled: (B, clip_dim);
        guidance: (B,) CFG-scale units, used only by guidance-distilled weights.
        Returns the velocity data - noise, (B, C, h, w) float32.
        """
        self._check_inputs(x, t, cap_feats, cap_mask)
        dt, p = self.compute_dtype, self.params
        size = x.shape[2:]
        x = pad_to_patches(x, p.patch_size)    # any latent size, as core's Lumina model; cropped back below
        b, _, h, w = x.shape
        c = self._conditioning(t, clip_pooled, guidance)                                     # (B, A)
        cap, layout = self._packed_captions(cap_feats, cap_mask, h // p.patch_size, w // p.patch_size, x.device)

        ctx = ForwardContext(layout, c, t, (h, w))

        cap = self.cap_embedder(cap.to(dt))                                                  # (sum Lc, dim)
        for block in self.context_refiner:
            cap = self._run(block, cap, layout.captions, *layout.rope(layout.cap_index))
        for entry in self.seam.at("captions"):
            cap = entry.captions(cap, ctx)
        img = self.x_embedder(patchify(x.to(dt), p.patch_size).flatten(0, 1))               # (B*N, dim)
        for block in self.noise_refiner:
            img = self._run(block, img, layout.images, *layout.rope(layout.img_index), c)

        joint = layout.join(cap, img)                                                        # (T, dim)
        joint = self._joint_layers(joint, ctx)

        img = joint[layout.img_index]
        for entry in self.seam.at("before_final"):
            img = entry.before_final(img, ctx)
        out = self.final_layer(img, layout.images, c)                                        # (B*N, p*p*C)
        return unpatchify(out.float().unflatten(0, (b, -1)), p.patch_size, h, w)[:, :, :size[0], :size[1]]

    def run_layers(self, joint: Tensor, ctx: ForwardContext, start: int = 0, stop: int | None = None) -> Tensor:
        """The joint layers ``start`` to ``stop`` (exclusive; None: the last) over the packed tokens
        (T, dim), with the entries acting before, inside and after each layer."""
        layout, c = ctx.layout, ctx.c
        cos, sin = layout.rope()
        stop = len(self.layers) if stop is None else stop
        for index in range(start, stop):
            for entry in self.seam.at("layer_input"):
                joint = entry.layer_input(index, joint, ctx)
            attend = self._attention(index, ctx)
            if attend is None:
                joint = self._run(self.layers[index], joint, layout.joint, cos, sin, c)
            else:
                joint = self._run(self.layers[index], joint, layout.joint, cos, sin, c, attend)
            for entry in self.seam.at("layer_output"):
                joint = entry.layer_output(index, joint, ctx)
        return joint

    def _joint_layers(self, joint: Tensor, ctx: ForwardContext) -> Tensor:
        """Every joint layer, or what the one ``joint_layers`` entry makes of them."""
        wrappers = self.seam.at("joint_layers")
        if not wrappers:
            return self.run_layers(joint, ctx)
        if len(wrappers) > 1:
            raise RuntimeError(f"only one entry may wrap the joint layers; attached: {self.seam.describe()}")

        def run(joint: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
            return self.run_layers(joint, ctx, start, stop)

        return wrappers[0].joint_layers(run, joint, ctx)

    def _attention(self, index: int, ctx: ForwardContext):
        """Joint layer ``index``'s attention when entries replace it (each one's ``run`` is the one
        attached before it, the first one's the plain attention), else None."""
        attend = None
        for entry in self.seam.at("attention"):
            attend = partial(entry.attention, index, ctx=ctx, run=attend or attention)
        return attend

    def _run(self, block: nn.Module, *args) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _packed_captions(self, cap_feats: Tensor, cap_mask: Tensor, rows: int, cols: int,
                         device: torch.device) -> tuple[Tensor, TokenLayout]:
        """The real caption tokens (sum Lc, cap_dim) and the batch's TokenLayout.

        Both depend only on the mask and the latent size, and a sampler passes the same mask
        tensor at every step: the layout and the gather rows are kept for the next call with
        that (unmodified) tensor, so later steps need no host synchronisation on a GPU
        (`pack_captions` reads the lengths back to the host).
        """
        # Inference-mode tensors have no version counter, so an in-place change could not be seen:
        # they are never cached.
        cacheable = not cap_mask.is_inference()
        key = (id(cap_mask), cap_mask._version if cacheable else None, rows, cols, cap_feats.shape[1],
               cap_feats.device, device)
        cached = self._layout_cache
        if cacheable and cached is not None and cached[0] == key and cached[1]() is cap_mask:
            return cap_feats.flatten(0, 1).index_select(0, cached[2]), cached[3]
        cap, cap_lens = pack_captions(cap_feats, cap_mask)
        p = self.params
        layout = TokenLayout.build(cap_lens, rows, cols, p.axes_dims, p.rope_theta, device)
        if cacheable:
            gather = cap_mask.flatten().nonzero().squeeze(1).to(cap_feats.device)   # rows of (B*L): real tokens
            self._layout_cache = (key, weakref.ref(cap_mask), gather, layout)
        return cap, layout

    def _conditioning(self, t: Tensor, clip_pooled: Tensor | None, guidance: Tensor | None) -> Tensor:
        """The adaLN vector c (B, adaln_dim) shared by every modulated block and the final layer."""
        dt = self.compute_dtype
        t_emb = self.t_embedder(t, dt)
        if guidance is not None and self.params.guidance_embed:
            t_emb = t_emb + self.guidance_embedder(guidance, dt)
        # Official NewBie: without a pooled CLIP vector the fused path is skipped (c = t_emb).
        if self.params.clip_dim is None or clip_pooled is None:
            return t_emb
        clip_emb = self.clip_text_pooled_proj(clip_pooled.to(dt))
        return self.time_text_embed(torch.cat([t_emb, clip_emb], dim=-1))

    def _check_inputs(self, x: Tensor, t: Tensor, cap_feats: Tensor, cap_mask: Tensor) -> None:
        p = self.params
        if x.ndim != 4 or x.shape[1] != p.in_channels:
            raise ValueError(f"x must be (B, {p.in_channels}, h, w); got {tuple(x.shape)}")
        b = x.shape[0]
        if t.shape != (b,):
            raise ValueError(f"t must be (B,) = ({b},); got {tuple(t.shape)}")
        if cap_feats.ndim != 3 or cap_feats.shape[0] != b or cap_feats.shape[2] != p.cap_dim:
            raise ValueError(f"cap_feats must be (B={b}, L, cap_dim={p.cap_dim}); got {tuple(cap_feats.shape)}")
        if cap_mask.shape != cap_feats.shape[:2]:
            raise ValueError(f"cap_mask must be (B, L) = {tuple(cap_feats.shape[:2])}; got {tuple(cap_mask.shape)}")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """A Next-DiT's repeated transformer blocks in the order the forward runs them ([] for a module
    without them)."""
    return [block for name in BLOCK_LISTS for block in getattr(model, name, ())]
