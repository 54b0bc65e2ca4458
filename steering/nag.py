"""Normalized Attention Guidance (NAG) on the Next-DiT's joint attention.

After Chen et al. 2025, "Normalized Attention Guidance: Universal Negative Guidance for Diffusion
Models" (arXiv 2505.21179): guidance away from a negative prompt in attention space, at one model
call per step, so it works where CFG cannot (cfg 1, guidance-distilled and few-step students). In
every joint layer, for the image tokens of a guided sample, the attention output over the positive
caption Z+ and the one over the negative caption Z− are combined by ``nag_math.nag_combine``
(extrapolate by the scale, clamp the L1-norm ratio at τ, blend with α). The caption rows and every
other computation of the layer are the model's own.

Where the negative caption comes from: it is a second caption stream carried through the joint
layers beside each guided sample, as the official code does for Flux and SD3 (a "negative" text
stream next to the image tokens):

- it starts as the context refiner's output for the negative prompt (the refiner is unmodulated
  and sees no image, so this is computed once per sampling run);
- in each joint layer it goes through that layer's own weights, modulated by the sample's adaLN
  vector, and its queries attend to [negative caption ; the sample's image tokens], exactly the
  attention of a sample whose caption is the negative prompt and whose image tokens are the
  positive sample's. The image queries' attention over the same keys is Z−;
- RoPE: negative token j sits at caption position Lpos − Lneg + j, so its offset to the image
  tokens (at position Lpos) is the one it has in a forward of the negative prompt alone.

The image tokens are never duplicated: the extra work per layer is the negative caption's few
tokens and one more attention for the image queries.

Which samples are guided: the conditional ones (the prompt's branch). Under CFG the sampler packs
the conditional samples first and tells the entry how many there are before each forward
(``prepare``; core's model names them by index from ``cond_or_uncond``); the unconditional
branch runs plainly. Outside the [start, end] share of the
sampling, at scale 1, or before ``prepare`` is called, the entry hands the plain attention
through untouched, so the forward is the plain one bit for bit.

The pooled Jina vector of the negative prompt is not used: NAG acts in attention only.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..dit.ops import Segments, pack_captions, rope_angles
from ..text.conditioning import PromptBatch, prompt_batches
from .nag_math import nag_combine

SETTINGS_ENTRY = "nag"              # the settings a NextDiT NAG node put on the model (state)
ACTIVE_ENTRY = "nag_guidance"       # the acting entry, attached while sampling
_SCRATCH = "nag"                    # the negative stream of one forward call, in ctx.scratch


@dataclass(frozen=True)
class NAGSettings:
    """What ``NextDiT NAG`` sets: the negative CONDITIONING and NAG's numbers. ``start_percent`` /
    ``end_percent``: the share of the sampling NAG applies to (0 = the start), as core's percents."""

    negative: Any = field(repr=False)
    scale: float = 5.0
    tau: float = 2.5
    alpha: float = 0.25
    start_percent: float = 0.0
    end_percent: float = 1.0

    def check(self) -> NAGSettings:
        for name in ("scale", "tau", "alpha", "start_percent", "end_percent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"NAG {name} must be a finite number; got {value!r}")
        if self.scale < 1:
            raise ValueError(f"NAG scale must be at least 1 (1 = no guidance); got {self.scale:g}")
        if self.tau < 1:
            raise ValueError(f"NAG tau must be at least 1 (the norm of the guided attention may grow to "
                             f"tau times the positive one's); got {self.tau:g}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"NAG alpha must be between 0 and 1; got {self.alpha:g}")
        if not 0 <= self.start_percent <= self.end_percent <= 1:
            raise ValueError(f"NAG needs 0 <= start_percent <= end_percent <= 1; got {self.start_percent:g} "
                             f"and {self.end_percent:g}")
        return self

    def describe(self) -> str:
        return (f"NAG scale {self.scale:g}, tau {self.tau:g}, alpha {self.alpha:g}, "
                f"{self.start_percent:g}-{self.end_percent:g} of the sampling")


def with_nag(model, settings: NAGSettings):
    """A structural copy of ``model`` (the same weights; ``lora/apply.py``) carrying ``settings``,
    which the pack's sampler and the core MODEL honour. ``model`` itself is not modified."""
    from ..lora.apply import structural_copy

    settings.check()
    patched = structural_copy(model)
    patched.seam.attach(SETTINGS_ENTRY, settings, replace=True)
    return patched


def nag_settings(model) -> NAGSettings | None:
    seam = getattr(model, "seam", None)
    return None if seam is None else seam.get(SETTINGS_ENTRY)


@dataclass
class _Stream:
    """The negative caption stream of one forward: its tokens and where they sit."""

    samples: Tensor            # the guided samples' indices in the batch
    tokens: Tensor             # (sum Lneg, dim) over the guided samples, in sample order
    segments: Segments         # Lneg per guided sample
    cos: Tensor                # (sum Lneg, D/2) RoPE of the negative tokens
    sin: Tensor
    order: Tensor              # rows of cat([negative tokens, joint]) forming [neg_j ; image_j] per sample
    sequences: Segments        # Lneg_j + N per guided sample
    neg_rows: Tensor           # rows of those sequences holding negative tokens
    img_rows: Tensor           # rows of those sequences holding image tokens (sample-major)
    guided_img: Tensor         # rows of the joint sequence holding the guided samples' image tokens


class NAGGuidance:
    """The seam entry (points ``captions`` and ``attention``) applying NAG while it is attached.

    negative: the negative prompt as a PromptBatch of the latent batch size (row i guides image i
    of every entry the sampler packs). window: the data-time range [low, high] NAG applies in.
    """

    def __init__(self, model, negative: PromptBatch, settings: NAGSettings, window: tuple[float, float]):
        self.model, self.settings, self.window = model, settings.check(), window
        self.negative = negative
        self.guided: tuple[int, ...] = ()   # the samples of the next forward it guides
        self._refined: tuple | None = None

    def prepare(self, t: float, conditional, prompts=None) -> None:
        """Before a forward: the data-time of the call and its conditional samples: how many
        leading ones (an int; the pack's sampler) or their indices (core's batches)."""
        active = self.settings.scale != 1.0 and self.window[0] <= t <= self.window[1]
        samples = range(conditional) if isinstance(conditional, int) else conditional
        self.guided = tuple(int(i) for i in samples) if active else ()

    # ---- the seam's points --------------------------------------------------------------------

    def captions(self, cap: Tensor, ctx) -> Tensor:
        if self.guided and max(self.guided) < len(ctx.layout.joint.lengths):
            ctx.scratch[_SCRATCH] = self._stream(ctx, cap)
        return cap

    def attention(self, index: int, q: Tensor, k: Tensor, v: Tensor, segments: Segments, ctx, run) -> Tensor:
        stream = ctx.scratch.get(_SCRATCH)
        if stream is None:
            return run(q, k, v, segments)
        z_neg = self._negative_layer(index, stream, q, k, v, ctx, run)
        z = run(q, k, v, segments)
        guided = nag_combine(z[stream.guided_img], z_neg, self.settings.scale, self.settings.tau,
                             self.settings.alpha)
        return z.index_copy(0, stream.guided_img, guided)

    # ---- the negative stream ------------------------------------------------------------------

    def _negative_layer(self, index: int, stream: _Stream, q, k, v, ctx, run) -> Tensor:
        """Joint layer ``index`` on the negative tokens (updates ``stream.tokens``); returns Z−,
        the guided image queries' attention over [negative caption ; image], (guided N, H·D).

        This is ``JointTransformerBlock.forward`` (dit/layers.py) for the negative rows. The
        attention module's ``forward`` is called directly, so hooks on that module (the step
        cache's) see only the model's own call; the Linears' hooks (LoRA) apply as usual."""
        block = self.model.layers[index]
        scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(
            ctx.c.index_select(0, stream.samples)).chunk(4, dim=-1)
        segs, x = stream.segments, stream.tokens
        found = {}

        def attend(qn: Tensor, kn: Tensor, vn: Tensor, _segments) -> Tensor:
            qs, ks, vs = (torch.cat([a, b]).index_select(0, stream.order) for a, b in ((qn, q), (kn, k), (vn, v)))
            out = run(qs, ks, vs, stream.sequences)
            found["z_neg"] = out[stream.img_rows]
            return out[stream.neg_rows]

        h = block.attention.forward(segs.scale(block.attention_norm1(x), 1 + scale_msa), segs,
                                    stream.cos, stream.sin, attend)
        x = x + segs.scale(block.attention_norm2(h), torch.tanh(gate_msa))
        h = block.feed_forward(segs.scale(block.ffn_norm1(x), 1 + scale_mlp))
        stream.tokens = x + segs.scale(block.ffn_norm2(h), torch.tanh(gate_mlp))
        return found["z_neg"]

    def _refined_negative(self, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """The context refiner's output for each negative row, (Lneg_i, dim); computed once."""
        if self._refined is not None and self._refined[0] == (dtype, device):
            return self._refined[1]
        model, p = self.model, self.model.params
        feats, lengths = pack_captions(self.negative.feats.to(device), self.negative.mask.to(device))
        positions = torch.zeros(len(feats), 3, dtype=torch.long, device=device)
        positions[:, 0] = torch.cat([torch.arange(n, device=device) for n in lengths]) if feats.shape[0] else 0
        angles = rope_angles(positions, p.axes_dims, p.rope_theta)
        segments = Segments.of(lengths, device)
        tokens = model.cap_embedder(feats.to(dtype))
        for block in model.context_refiner:
            tokens = block(tokens, segments, torch.cos(angles), torch.sin(angles))
        refined = list(tokens.split(lengths))
        self._refined = ((dtype, device), refined)
        return refined

    def _stream(self, ctx, cap: Tensor) -> _Stream:
        """The negative stream for the guided samples of this forward, and its index tables."""
        layout, p, device = ctx.layout, self.model.params, cap.device
        guided = self.guided
        refined = self._refined_negative(cap.dtype, device)
        rows = [refined[j % len(refined)] for j in guided]
        neg_lens = [len(r) for r in rows]
        cap_lens = [layout.captions.lengths[j] for j in guided]
        n_img = layout.images.lengths[0]
        positions = torch.zeros(sum(neg_lens), 3, dtype=torch.long, device=device)
        positions[:, 0] = torch.cat([torch.arange(lp - ln, lp, device=device)
                                     for lp, ln in zip(cap_lens, neg_lens)]) if sum(neg_lens) else 0
        angles = rope_angles(positions, p.axes_dims, p.rope_theta)
        # [neg_j ; image_j] per guided sample, as rows of cat([negative tokens, joint tokens]).
        total_neg, order, neg_rows, img_rows, images = sum(neg_lens), [], [], [], []
        neg_start = start = 0
        for j, ln in zip(guided, neg_lens):
            image = layout.img_index[j * n_img:(j + 1) * n_img]
            images.append(image)
            order += [torch.arange(neg_start, neg_start + ln, device=device), total_neg + image]
            neg_rows.append(torch.arange(start, start + ln, device=device))
            img_rows.append(torch.arange(start + ln, start + ln + n_img, device=device))
            neg_start, start = neg_start + ln, start + ln + n_img
        return _Stream(
            samples=torch.tensor(guided, device=device),
            tokens=torch.cat(rows), segments=Segments.of(neg_lens, device),
            cos=torch.cos(angles), sin=torch.sin(angles), order=torch.cat(order),
            sequences=Segments.of([ln + n_img for ln in neg_lens], device),
            neg_rows=torch.cat(neg_rows), img_rows=torch.cat(img_rows), guided_img=torch.cat(images))


def nag_guidance(model, batch_size: int, data_time: Callable[[float], float]) -> NAGGuidance | None:
    """The acting entry for sampling ``model`` (None when it carries no NAG, or at scale 1);
    ``data_time`` maps a share of the sampling to the data-time the sampler reaches there."""
    settings = nag_settings(model)
    if settings is None or settings.scale == 1.0:
        return None
    p = model.params
    negatives = prompt_batches(settings.negative, batch_size, p.cap_dim, p.clip_dim, "NAG negative")
    if len(negatives) != 1:
        raise ValueError(f"the NAG negative conditioning holds {len(negatives)} entries; NAG takes one "
                         f"negative prompt (encode it as one text)")
    window = (data_time(settings.start_percent), data_time(settings.end_percent))
    return NAGGuidance(model, negatives[0], settings, window)


@contextlib.contextmanager
def attached(model, entry: NAGGuidance | None) -> Iterator[NAGGuidance | None]:
    """``entry`` on the model's seam for the duration of one sampling run."""
    with attached_all(model, {ACTIVE_ENTRY: entry}):
        yield entry


@contextlib.contextmanager
def attached_all(model, entries: dict[str, Any]) -> Iterator[list]:
    """The entries that are not None on the model's seam, in order, for one sampling run;
    yields them as a list."""
    names = []
    try:
        for name, entry in entries.items():
            if entry is not None:
                model.seam.attach(name, entry)
                names.append(name)
        yield [entries[name] for name in names]
    finally:
        for name in reversed(names):
            model.seam.detach(name)
