"""Classifier-free guidance with the official NewBie semantics, run as one packed forward.

``NextDiT_CLIP.forward_with_cfg`` in the official ``models/model.py`` (NewBie-image-Exp0.1), per
model evaluation at data-time t:
- t < cfg_trunc: v = v_u + cfg·(v_c − v_u); if renorm_cfg > 0 the guided velocity is scaled down,
  per sample over (C, H, W), to at most renorm_cfg·‖v_c‖;
- otherwise the conditional velocity alone.
The conditional and unconditional prompts go through ONE forward: their captions are padded to the
longest with a mask and the model packs the real tokens, so nothing is computed on padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..controlnet.apply import controls_attached, packed_controls, prepare
from ..sampler_settings import SamplerSettings
from ..text.conditioning import PromptBatch, PromptEntry, pack
from .schedule import core_step_sigma, float32, percent_sigma, percent_time


def combine_cfg(v_cond: Tensor, v_uncond: Tensor, cfg: float, renorm_cfg: float) -> Tensor:
    """Guided velocity (B, C, h, w) from the two branches, with the official optional renorm."""
    guided = v_uncond + cfg * (v_cond - v_uncond)
    if renorm_cfg > 0:
        dims = tuple(range(1, guided.ndim))
        max_norm = renorm_cfg * torch.linalg.vector_norm(v_cond, dim=dims, keepdim=True)
        norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
        # Official: `if ‖v‖ >= max: v *= max/‖v‖`, here per sample (the official code assumes batch 1).
        scale = torch.where(norm >= max_norm, max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny), 1.0)
        guided = guided * scale
    return guided


def cfg_active(t: float, cfg: float, cfg_trunc: float) -> bool:
    """Whether this evaluation runs the unconditional branch: cfg ≠ 1 and t < cfg_trunc (data-time)."""
    return cfg != 1.0 and t < cfg_trunc


class GuidedVelocity:
    """``velocity(x, t)`` for the solvers: the model with CFG and/or a distilled guidance scale.

    positive / negative: the CONDITIONING entries (PromptEntry, of the latent batch size). At each
    evaluation the entries whose time range holds t apply, averaged with their strengths as
    weights, as core ComfyUI averages entries without areas; the conditional and unconditional
    entries that apply run as one packed forward. The settings' ``shift`` maps the entries'
    start/end percents onto data-time as core does; their ``guidance`` > 0 is fed to the guidance
    embedder of distilled weights. ``start``: the data-time sampling starts at. ``steering``:
    seam entries attached to the model (``steering/``: NAG, prompt weights), each told before every
    forward ``prepare(t, conditional, prompts)``: the data-time, how many leading samples are
    conditional, and the packed prompts.
    """

    def __init__(self, model, positive: list[PromptEntry], negative: list[PromptEntry] | None,
                 settings: SamplerSettings, start: float = 0.0, steering=()):
        cfg, cfg_trunc, guidance, shift = settings.cfg, settings.cfg_trunc, settings.guidance or 0.0, settings.shift
        if cfg != 1.0 and not negative:
            raise ValueError(f"cfg {cfg} needs a negative conditioning; connect one or set cfg to 1")
        self.model = model
        self.cfg, self.renorm_cfg, self.cfg_trunc = float(cfg), float(settings.renorm_cfg), float(cfg_trunc)
        self.batch = positive[0].batch.size
        self.positive, self.negative = positive, negative or []
        self.spans = [(percent_time(e.start_percent, shift), percent_time(e.end_percent, shift))
                      for e in self.positive + self.negative]
        # Which entries apply is decided as core's KSampler decides it (samplers.py
        # get_area_and_mult): the step's sigma as core's float32 table holds it against each
        # entry's percent_to_sigma bounds, compared in float32 (a tensor against a Python float),
        # so a bound that falls on a grid point splits the steps as in core.
        self.shift = float(shift)
        self.sigma_spans = [(float32(percent_sigma(e.end_percent, shift)),
                             float32(percent_sigma(e.start_percent, shift)))
                            for e in self.positive + self.negative]
        self.guidance = float(guidance) if guidance > 0 else None
        self.chains = [list(e.controls) for e in self.positive + self.negative]
        if any(self.chains):
            for chain in self.chains:
                for handle in chain:
                    prepare(handle.net, model)
        self.steering = tuple(steering)
        self._packs: dict[tuple, tuple[PromptBatch, Tensor]] = {}
        _check_coverage(self.spans[:len(positive)], start, 1.0, "positive")
        if cfg != 1.0:
            _check_coverage(self.spans[len(positive):], start, min(cfg_trunc, 1.0), "negative")

    def _packed(self, entries: tuple[int, ...]) -> tuple[PromptBatch, Tensor]:
        """The entries' prompts in one PromptBatch on the model's device, and their weights;
        kept for the next step with the same entries (the same mask tensor lets the model
        reuse its token layout)."""
        if entries not in self._packs:
            chosen = [(self.positive + self.negative)[i] for i in entries]
            weights = torch.tensor([e.strength for e in chosen], dtype=torch.float32)
            self._packs[entries] = (pack([e.batch for e in chosen]).to(self.model.device),
                                    weights.to(self.model.device))
        return self._packs[entries]

    def _active(self, t: float, first: int, count: int) -> tuple[int, ...]:
        # An entry applies while σ = 1 − t is inside its range, ends included (core: an entry is
        # skipped when σ > σ_start or σ < σ_end).
        sigma = core_step_sigma(t, self.shift)
        return tuple(i for i in range(first, first + count)
                     if self.sigma_spans[i][0] <= sigma <= self.sigma_spans[i][1])

    def _controls(self, t: float, entries: tuple[int, ...], latent_hw: tuple[int, int]) -> list:
        """The ControlNets the packed entries carry that apply at data-time t (their start/end
        percent mapped like the entries' own ranges)."""
        def is_active(handle) -> bool:
            start, end = handle.timestep_percent_range
            return percent_time(start, self.shift) <= t <= percent_time(end, self.shift)

        return packed_controls([self.chains[i] for i in entries], self.batch, latent_hw, is_active)

    def _forward(self, x: Tensor, t: float, prompts: PromptBatch, entries: tuple[int, ...] = ()) -> Tensor:
        """Model velocities for every prompt entry: (entries, B, C, h, w) from one forward."""
        chosen, entries = entries, prompts.size // self.batch
        x_all = x.repeat(entries, 1, 1, 1) if entries > 1 else x
        n = x_all.shape[0]
        t_all = torch.full((n,), t, device=x.device, dtype=torch.float32)
        g_all = None if self.guidance is None else torch.full((n,), self.guidance, device=x.device,
                                                              dtype=torch.float32)
        if any(self.chains[i] for i in chosen):
            with controls_attached(self.model, self._controls(t, chosen, tuple(x.shape[2:]))):
                v = self.model(x_all, t_all, prompts.feats, prompts.mask, prompts.pooled, g_all)
        else:
            v = self.model(x_all, t_all, prompts.feats, prompts.mask, prompts.pooled, g_all)
        return v.unflatten(0, (entries, self.batch))

    def __call__(self, x: Tensor, t: float) -> Tensor:
        positive = self._active(t, 0, len(self.positive))
        negative = self._active(t, len(self.positive), len(self.negative)) if cfg_active(
            t, self.cfg, self.cfg_trunc) else ()
        prompts, weights = self._packed(positive + negative)
        for entry in self.steering:
            entry.prepare(t, len(positive) * self.batch, prompts)
        v = self._forward(x, t, prompts, positive + negative)
        v_cond = _weighted_mean(v[:len(positive)], weights[:len(positive)])
        if not negative:
            return v_cond
        return combine_cfg(v_cond, _weighted_mean(v[len(positive):], weights[len(positive):]), self.cfg,
                           self.renorm_cfg)


def _weighted_mean(v: Tensor, weights: Tensor) -> Tensor:
    """(entries, B, C, h, w) velocities averaged with per-entry weights."""
    return (v * weights.view(-1, 1, 1, 1, 1)).sum(0) / weights.sum()


def _check_coverage(spans: list[tuple[float, float]], start: float, end: float, what: str) -> None:
    """ValueError unless the spans cover data-time [start, end]: a step without a prompt would have
    nothing to sample towards (core would predict zeros there)."""
    covered = start
    for low, high in sorted(spans):
        if low > covered:
            break
        covered = max(covered, high)
    if covered < end:
        raise ValueError(f"the {what} conditioning's time ranges (ConditioningSetTimestepRange) leave part of "
                         f"the sampling without a prompt, from data-time {covered:.3f} on; give the ranges "
                         f"no gaps, or add a {what} prompt without a range")
