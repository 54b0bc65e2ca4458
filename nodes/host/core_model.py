"""The pack's Next-DiT as a core ComfyUI MODEL (imported only inside ComfyUI).

``core_model(nextdit)`` wraps the very Next-DiT the pack's loader made (no copy, no second set of
weights) in a ``comfy.model_base.BaseModel`` subclass and the pack's ``PackModelPatcher``, so
core's samplers, schedulers, model patches, wrappers, caches and LoRA loaders work with it, while
precision (fp16-safe path, fp8 storage), block streaming and the memory manager stay the pack's.
What core expects of a Lumina-2 / NewBie model, as ``comfy/supported_models.py`` ``Lumina2`` sets
it: flow model sampling (CONST, shift 6, multiplier 1) and the FLUX latent format. Core's sigma
is the noise fraction, so the Next-DiT gets data-time 1 − σ and returns v = data − noise, which
core reads as the model output −v (docs/newbie-image.md §8).

Conditioning: ``extra_conds`` reads core CONDITIONING as both the pack's ``NextDiT Text Encode``
and core's NewBie text encoder write it (caption features, ``attention_mask``, ``pooled_output``;
``guidance`` from core's ``FluxGuidance`` for guidance-distilled students, else the scale a
few-step student's file records). The caption and its
mask travel as one ``CaptionCond``, which core may batch across prompts of different lengths:
they are padded with masked tokens, and the Next-DiT packs the real tokens, so no compute goes
to padding.

A few-step student's recorded settings (``dit.own_settings``) become this MODEL's defaults where
a model can set them: its shift is the model sampling's, and its guidance scale applies when the
conditioning carries none. Steps, sampler and cfg stay the sampler node's widgets: set them to
the recorded values, which the loader's log line names.
"""

from __future__ import annotations

import contextlib

import torch
from comfy import conds, model_base, patcher_extension, samplers, supported_models
from comfy import model_management as mm

from ...controlnet.apply import controls_attached, prepare
from ...dit.own_settings import own_settings
from ...sampling.guidance import cfg_active, combine_cfg
from ...steering.nag import ACTIVE_ENTRY as NAG_ENTRY, attached_all, nag_guidance, nag_settings
from ...steering.weights import ENTRY as WEIGHTS_ENTRY, PromptWeights
from ...text.conditioning import prompt_batches
from .patcher import patcher_class

_CORE_MODEL = "core_model"   # its name on the Next-DiT's seam


class CaptionCond(conds.CONDRegular):
    """Caption features, mask and prompt weights as one tensor (n, L, D + 2): the mask and the
    token weights (1 without prompt weights) are the last two channels.

    Entries of different lengths concatenate: the shorter are padded with zero features and mask
    0 at the end (real tokens first, as the Next-DiT packs them)."""

    def can_concat(self, other):
        return self.cond.shape[2] == other.cond.shape[2] and self.cond.device == other.cond.device

    def concat(self, others):
        entries = [self.cond] + [other.cond for other in others]
        longest = max(entry.shape[1] for entry in entries)
        return torch.cat([torch.nn.functional.pad(entry, (0, 0, 0, longest - entry.shape[1])) for entry in entries])


def caption_tensor(feats: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(n, L, D) features, (n, L) mask and token weights (None: all 1) -> the (n, L, D + 2) value
    of a CaptionCond."""
    weights = torch.ones_like(mask, dtype=torch.float32) if weights is None else weights.float()
    return torch.cat([feats.float(), mask.float().unsqueeze(-1), weights.unsqueeze(-1)], dim=-1)


class NextDiTCoreModel(model_base.BaseModel):
    """A core BaseModel whose diffusion model is the pack's Next-DiT (state-dict keys
    ``diffusion_model.<official key>``, so core LoRA patches find the weights)."""

    def __init__(self, nextdit, device=None):
        config = supported_models.Lumina2({"image_model": "lumina2", "disable_unet_model_creation": True})
        self.own_settings = own_settings(nextdit)
        if self.own_settings is not None:   # a few-step student samples on the grid it was made for
            config.sampling_settings = {**config.sampling_settings, "shift": self.own_settings.shift}
        super().__init__(config, model_base.ModelType.FLOW, device=device)
        self.diffusion_model = nextdit

    def get_dtype(self):
        return self.diffusion_model.compute_dtype

    def extra_conds(self, **kwargs):
        p = self.diffusion_model.params
        extras = {key: kwargs.get(key) for key in ("attention_mask", "pooled_output", "token_weights")}
        (batch,) = prompt_batches([[kwargs["cross_attn"], extras]], 1, p.cap_dim, p.clip_dim, "conditioning")
        out = {"nextdit_caption": CaptionCond(caption_tensor(batch.feats, batch.mask, batch.weights))}
        if batch.pooled is not None:
            out["clip_text_pooled"] = conds.CONDRegular(batch.pooled)
        guidance = kwargs.get("guidance")
        if guidance is None and self.own_settings is not None:   # FluxGuidance overrides the file's scale
            guidance = self.own_settings.guidance
        if guidance is not None and p.guidance_embed:
            out["guidance"] = conds.CONDRegular(torch.tensor([float(guidance)]))
        return out

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        output = patcher_extension.WrapperExecutor.new_class_executor(
            self._run_dit, self,
            patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(xc, sigma, kwargs["nextdit_caption"], kwargs.get("clip_text_pooled"), kwargs.get("guidance"),
                  transformer_options, control)
        return self.model_sampling.calculate_denoised(sigma, output.float(), x)

    def _run_dit(self, x, sigma, caption, pooled, guidance, transformer_options, control=None):
        """Core's model output for ``x`` at noise fraction ``sigma``: −v (B, C, h, w). ``control``:
        what the cond's ControlNet handles returned for this call (controlnet/handle.py), run
        through the Next-DiT's seam as NextDiT Sampler runs them."""
        caption = caption.to(x.device, torch.float32)
        feats, mask, weights = caption[..., :-2], caption[..., -2] > 0.5, caption[..., -1]
        weights = torch.where(mask, weights, 1.0)    # core pads concatenated captions with zeros
        data_time = 1.0 - self.model_sampling.timestep(sigma).float()
        nextdit = self.diffusion_model
        for active in control or ():
            prepare(active.net, nextdit)
        with (attached_all(nextdit, self._steering(transformer_options, data_time, weights)),
              controls_attached(nextdit, control) if control else contextlib.nullcontext()):
            v = nextdit(x.float(), data_time, feats, mask,
                        None if pooled is None else pooled.to(x.device, torch.float32),
                        None if guidance is None else guidance.to(x.device, torch.float32).reshape(-1))
        return -v

    def _steering(self, transformer_options, data_time, weights) -> dict:
        """The pack's steering entries for one call, in the order the pack's sampler attaches them:
        prompt weights from the captions; core's attention output patches (``CoreOutputPatches``);
        NAG from the settings NextDiT NAG put on the Next-DiT (guiding the samples core marks
        conditional in ``cond_or_uncond``)."""
        entries, t = {}, float(data_time.reshape(-1)[0])
        if not bool((weights == 1).all()):
            entries[WEIGHTS_ENTRY] = PromptWeights()
            entries[WEIGHTS_ENTRY].use(weights)
        output_patches = transformer_options.get("patches", {}).get("attn1_output_patch")
        if output_patches:
            entries[_OUTPUT_PATCHES] = CoreOutputPatches(output_patches, transformer_options)
        nextdit = self.diffusion_model
        if nag_settings(nextdit) is not None:
            kinds = transformer_options.get("cond_or_uncond") or [0]
            chunk = weights.shape[0] // len(kinds)
            entry = self._nag_entries.get((id(nextdit), chunk)) if hasattr(self, "_nag_entries") else None
            if entry is None or entry.model is not nextdit:
                entry = nag_guidance(nextdit, chunk,
                                     lambda percent: 1.0 - float(self.model_sampling.percent_to_sigma(percent)))
                self._nag_entries = {(id(nextdit), chunk): entry}
            if entry is not None:
                entry.prepare(t, [c * chunk + i for c, kind in enumerate(kinds) if kind == 0 for i in range(chunk)])
                entries[NAG_ENTRY] = entry
        return entries


_OUTPUT_PATCHES = "core_attn1_output_patch"   # core's attention output patches, for one call


class CoreOutputPatches:
    """Core's ``attn1_output_patch`` functions (``ModelPatcher.set_model_attn1_output_patch``,
    e.g. core's NAGuidance) on each joint layer's attention output, as core's Flux calls them: with
    ``(out, extra_options)`` before the output projection, ``extra_options`` the call's
    transformer_options with ``img_slice`` and ``block_index``. Here ``out`` holds the image rows
    of every sample, (B, N, H·D), and ``img_slice`` is [0, N]: the samples' captions differ in
    length, so their rows do not line up in one tensor; caption rows are not shown to the patch."""

    def __init__(self, patches, transformer_options):
        self.patches, self.options = list(patches), transformer_options

    def attention(self, index, q, k, v, segments, ctx, run):
        z = run(q, k, v, segments)
        if segments is not ctx.layout.joint:
            return z
        rows, n_img = ctx.layout.img_index, ctx.layout.images.lengths[0]
        out = z[rows].unflatten(0, (-1, n_img))
        extra = {**self.options, "img_slice": [0, n_img], "block_index": index}
        for patch in self.patches:
            out = patch(out, extra)
        return z.index_copy(0, rows, out.flatten(0, 1).to(z.dtype))


def core_model(nextdit):
    """The core MODEL (a PackModelPatcher) of a Next-DiT; one per Next-DiT object, kept in its
    seam so every use of it goes through the same patcher."""
    patcher = nextdit.seam.get(_CORE_MODEL)
    if patcher is None or patcher.get_model_object("diffusion_model") is not nextdit:   # not this one's
        offload_device = mm.unet_offload_device()
        patcher = patcher_class()(NextDiTCoreModel(nextdit, device=offload_device), mm.get_torch_device(),
                                  offload_device)
        nextdit.seam.attach(_CORE_MODEL, patcher, replace=True)
    return patcher


def with_diffusion_model(patcher, nextdit):
    """A clone of ``patcher`` that runs ``nextdit`` (a LoRA'd structural copy of its Next-DiT) in
    its place: core's object patch, applied when the clone loads and undone when another loads."""
    clone = patcher.clone()
    clone.add_object_patch("diffusion_model", nextdit)
    nextdit.seam.attach(_CORE_MODEL, clone, replace=True)
    return clone


def release_weight_patches(nextdit) -> None:
    """Put ``nextdit``'s own weights back if a clone of its core MODEL left core weight patches in
    them. Core patches the weights in place of the originals while such a clone (a core LoRA) is
    loaded, and leaves them there until another clone loads; a LoRA'd structural copy made
    meanwhile (NextDiT LoRA Loader) would share the patched weights and carry both LoRAs. The
    loaded clones are unloaded through the memory manager, as core does before loading a clone
    with other patches."""
    patcher = nextdit.seam.get(_CORE_MODEL)
    if patcher is None or patcher.get_model_object("diffusion_model") is not nextdit:
        return
    carried = getattr(patcher.model, "current_weight_patches_uuid", None)
    if carried is None or carried == patcher.patches_uuid:
        return
    for index in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[index]
        if loaded.model is not None and patcher.is_clone(loaded.model):
            mm.current_loaded_models.pop(index).model_unload()
    if patcher.model.current_weight_patches_uuid not in (None, patcher.patches_uuid):  # not listed as loaded
        patcher.unpatch_model(patcher.offload_device, unpatch_weights=True)


def official_cfg(patcher, cfg_trunc: float, renorm_cfg: float):
    """A clone whose CFG is the official NewBie one (``sampling/guidance.py``): while data-time
    t = 1 − σ is below ``cfg_trunc`` the guided velocity, renormalised to at most ``renorm_cfg``
    times the conditional one's norm (0: off); from then on the conditional velocity alone, and
    the unconditional branch is no longer computed.

    Core hands the CFG function x − denoised per branch, which for a flow model is −σ·v: the same
    factor for both branches, so combining and renormalising them is combining velocities."""
    clone = patcher.clone()

    def data_time(sigma) -> float:
        return 1.0 - float(sigma.reshape(-1)[0])   # one noise level per step for the whole batch

    def guide(args):
        if not cfg_active(data_time(args["sigma"]), args["cond_scale"], cfg_trunc):
            return args["cond"]
        return combine_cfg(args["cond"], args["uncond"], args["cond_scale"], renorm_cfg)

    def branches(args):
        cond, uncond = args["conds"]
        if uncond is not None and data_time(args["sigma"]) >= cfg_trunc:
            uncond = None   # past the truncation only the conditional branch is used
        return samplers.calc_cond_batch(args["model"], [cond, uncond], args["input"], args["sigma"],
                                        args["model_options"])

    clone.set_model_sampler_cfg_function(guide)
    clone.set_model_sampler_calc_cond_batch_function(branches)
    return clone
