"""``sample(...)``: text-to-image and image-to-image sampling of a Next-DiT, returning a LATENT.

The steps: CONDITIONING → caption tensors; initial noise exactly as ComfyUI's KSampler draws it
(``torch.randn`` of the latent shape from a CPU generator seeded with ``seed``, float32); the shifted
rectified-flow grid; a fixed-grid ODE solver over the guided velocity; the result in the FLUX VAE's
raw space.

Image-to-image: ``denoise`` is on core ComfyUI's KSampler scale: sampling starts where KSampler's
does, at the unshifted noise fraction ≈ denoise, shifted (``schedule.denoise_start``: shift 6,
denoise 0.1 starts at σ 0.4). The input latent (normalised) is mixed with the noise at that
data-time t₀, x = t₀·latent + (1 − t₀)·noise (ComfyUI's flow noise scaling), and the ``steps``
solver steps cover [t₀, 1] on the same shifted curve (``schedule.time_grid``), which are core's
points wherever 1000 / int(steps / denoise) is whole. ``denoise = 1`` is text-to-image on the
input's size; ``denoise = 0`` returns the input latent unchanged.

Non-finite values: on the CPU every step checks its state and velocity and raises
``NonFiniteError`` at once; on an accelerator the check is queued on the device (no per-step host
synchronisation) and read once after the last step, naming the first bad step either way.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..dit.own_settings import own_settings
from ..dit.step_cache import StepCache, step_cache as cached
from ..sampler_settings import SamplerSettings, check_settings
from ..steering.nag import ACTIVE_ENTRY as NAG_ENTRY, attached_all, nag_guidance
from ..steering.weights import ENTRY as WEIGHTS_ENTRY, PromptWeights
from ..text.conditioning import read_entries
from ..vae.latent_format import FLUX
from .guidance import GuidedVelocity
from .inpaint import InpaintVelocity, resize_mask
from .schedule import denoise_start, percent_time, time_grid
from .solvers import denoised, get_solver

log = logging.getLogger(__name__)

Callback = Callable[[int, int, Tensor], None]  # (step 0-based, total steps, x0 estimate normalised)


@dataclass
class SamplingReport:
    """What a run used and did, for the caller to show: the settings after steps 0 was resolved to
    the model's own ones, and the step cache's counts (None when it was off)."""
    settings: SamplerSettings | None = None
    own_settings: bool = False
    cache: StepCache | None = None

    def describe(self) -> str:
        text = self.settings.describe()
        if self.own_settings:
            text += " (the model's own settings)"
        return text if self.cache is None else f"{text}; {self.cache.describe()}"


class NonFiniteError(FloatingPointError):
    """The model produced NaN or inf during sampling."""

    __module__ = "nextdit_nodes"   # ComfyUI's error panel shows the module (files/errors.py)


def _raise_non_finite(step: int, total: int, dtype: torch.dtype) -> None:
    if step < 0:
        raise NonFiniteError("the input latent contains NaN or inf values; re-encode the image")
    raise NonFiniteError(
        f"the model produced NaN/inf values at step {step + 1} of {total} (computing in {dtype}); "
        f"load the model with another weight dtype (fp32, or bf16 instead of fp16) and run again")


class _NonFiniteWatch:
    """Finds the first step whose evaluations produced NaN/inf (see the module docstring)."""

    def __init__(self, device: torch.device, total: int, dtype: torch.dtype, deferred: bool | None = None):
        self.immediate = device.type == "cpu" if deferred is None else not deferred
        self.total, self.dtype = total, dtype
        self.first_bad = None if self.immediate else torch.full((), total + 1, device=device)

    def observe(self, step: int, x: Tensor, v: Tensor) -> None:
        """x is the state at the start of ``step`` (bad → the previous step), v its velocity."""
        bad_x, bad_v = ~torch.isfinite(x).all(), ~torch.isfinite(v).all()
        if self.immediate:
            if bad_x:
                _raise_non_finite(step - 1, self.total, self.dtype)
            if bad_v:
                _raise_non_finite(step, self.total, self.dtype)
            return
        code = torch.where(bad_x, step - 1, torch.where(bad_v, step, self.total + 1))
        self.first_bad = torch.minimum(self.first_bad, code)

    def finish(self, x: Tensor) -> None:
        last = ~torch.isfinite(x).all()
        if self.immediate:
            if last:
                _raise_non_finite(self.total - 1, self.total, self.dtype)
            return
        first = int(torch.minimum(self.first_bad, torch.where(last, self.total - 1, self.total + 1)))
        if first <= self.total - 1:
            _raise_non_finite(first, self.total, self.dtype)


def _start_latent(latent: dict | None, batch_size: int, width: int, height: int,
                  channels: int) -> tuple[Tensor | None, tuple[int, ...]]:
    """The normalised input latent (or None) and the shape of the latent batch to sample."""
    if latent is None:
        return None, (batch_size, channels, height // 8, width // 8)
    raw = latent.get("samples") if isinstance(latent, dict) else None
    if isinstance(raw, Tensor) and raw.ndim == 4 and raw.shape[1] != channels and not raw.any():
        # An empty latent made for another model (core's EmptyLatentImage: 4 channels) has only its
        # size to give; core's KSampler widens it to the model's channels the same way.
        raw = raw.new_zeros((raw.shape[0], channels, *raw.shape[2:]))
    if not isinstance(raw, Tensor) or raw.ndim != 4 or raw.shape[1] != channels:
        raise ValueError(f"latent must be a LATENT dict with samples (B, {channels}, h, w) in the FLUX "
                         f"VAE's space; got {None if raw is None else tuple(raw.shape)}")
    if (raw.shape[2] * 8, raw.shape[3] * 8) != (height, width):
        log.info("sampling at the input latent's size %dx%d, not width/height %dx%d",
                 raw.shape[3] * 8, raw.shape[2] * 8, width, height)
    if raw.shape[0] not in (1, batch_size) and batch_size != 1:
        raise ValueError(f"latent holds {raw.shape[0]} images but batch_size is {batch_size}; "
                         f"use batch_size 1 (the latent's batch) or a single-image latent")
    normalised = FLUX.from_raw(raw.float().cpu())
    if normalised.shape[0] == 1 and batch_size > 1:
        normalised = normalised.expand(batch_size, -1, -1, -1)
    return normalised, tuple(normalised.shape)


class _CancelCheck:
    """A seam entry calling ``cancel`` after every joint layer."""

    def __init__(self, cancel: Callable[[], None]):
        self.cancel = cancel

    def layer_output(self, index: int, joint: Tensor, ctx) -> Tensor:
        self.cancel()
        return joint


@contextlib.contextmanager
def _checking(model, cancel: Callable[[], None] | None):
    if cancel is None:
        yield
        return
    model.seam.attach("cancel_check", _CancelCheck(cancel))
    try:
        yield
    finally:
        model.seam.detach("cancel_check")


def initial_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """ComfyUI KSampler's noise for ``seed``: float32 randn on a seeded CPU generator."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def sample(model, positive, negative, settings: SamplerSettings, *, width: int, height: int, seed: int,
           batch_size: int = 1, latent: dict | None = None, callback: Callback | None = None,
           cancel: Callable[[], None] | None = None, report: SamplingReport | None = None) -> dict:
    """Sample latents; returns LATENT ``{"samples": (B, 16, H/8, W/8)}`` float32 CPU, raw FLUX space.

    model: the NextDiT from ``load_dit``. positive / negative: CONDITIONING (negative unused and
    optional when cfg == 1). settings: how to sample (``SamplerSettings``; steps 0 = the model's
    own settings, which a few-step student's file records). width / height: the image size
    (a connected ``latent``'s size wins). callback(step, total, x0): once per step with the current
    clean-latent estimate (normalised space); an exception raised there stops sampling. cancel():
    called after every joint layer, so an exception it raises (the user pressed Cancel) stops a long
    step within one layer's time. report: filled with the settings used and the step cache's counts.
    """
    requested = settings
    check_settings(steps=settings.steps)
    settings = settings.resolved(own_settings(model)).check()
    sized = latent is None    # else the latent's size, whatever it is (the model pads to its patches)
    check_settings(width=width if sized else None, height=height if sized else None, batch_size=batch_size)
    if report is not None:
        report.settings, report.own_settings = settings, requested.steps == 0
    steps, solver, shift, cfg = settings.steps, settings.solver, settings.shift, settings.cfg
    guidance, denoise, step_cache = settings.guidance, settings.denoise, settings.step_cache
    solve = get_solver(solver)
    params = model.params
    if guidance > 0 and not params.guidance_embed:
        raise ValueError(f"guidance {guidance} needs guidance-distilled weights (with guidance_embedder.* "
                         f"keys) but this model has no guidance embedder; set guidance to 0 and use cfg, "
                         f"or distill a student with `python -m nextdit_nodes distill`")
    if cfg != 1.0 and negative is None:
        raise ValueError(f"cfg {cfg} needs a negative conditioning; connect one (an empty prompt is "
                         f"the official default) or set cfg to 1")
    if latent is None and denoise < 1.0:
        raise ValueError(f"denoise {denoise} needs an input latent to start from; connect one or "
                         f"set denoise to 1")
    start_latent, shape = _start_latent(latent, batch_size, width, height, params.in_channels)
    if start_latent is not None and denoise == 0.0:
        return {**latent, "samples": latent["samples"].float().cpu().clone()}

    batch = shape[0]
    t0 = 0.0 if start_latent is None else denoise_start(denoise, steps, shift)    # core KSampler's start
    pos = read_entries(positive, batch, params.cap_dim, params.clip_dim, "positive")
    neg = (read_entries(negative, batch, params.cap_dim, params.clip_dim, "negative")
           if cfg != 1.0 else None)
    # Steering through the seam: prompt weights (from the CONDITIONINGs), then NextDiT NAG's settings.
    steering = {WEIGHTS_ENTRY: PromptWeights() if any(e.batch.weights is not None for e in pos + (neg or []))
                else None,
                NAG_ENTRY: nag_guidance(model, batch, lambda percent: percent_time(percent, shift))}
    velocity = GuidedVelocity(model, pos, neg, settings, start=t0,
                              steering=[entry for entry in steering.values() if entry is not None])

    device = model.device
    noise = initial_noise(shape, seed)
    x = noise if start_latent is None or t0 == 0 else t0 * start_latent + (1.0 - t0) * noise
    x = x.to(device)
    mask = None if start_latent is None else latent.get("noise_mask")
    if mask is not None:   # only the masked region is generated (sampling/inpaint.py)
        velocity = InpaintVelocity(velocity, resize_mask(mask, shape).to(device), start_latent.to(device),
                                   noise.to(device))
    times = time_grid(steps, shift, t0)
    watch = _NonFiniteWatch(device, steps, getattr(model, "compute_dtype", torch.float32))

    def on_step(i: int, x_i: Tensor, t_i: float, v_i: Tensor) -> None:
        watch.observe(i, x_i, v_i)
        if callback is not None:
            callback(i, steps, denoised(x_i, t_i, v_i))

    with (torch.no_grad(), _checking(model, cancel), attached_all(model, steering),
          (cached(model, step_cache) if step_cache > 0 else contextlib.nullcontext()) as cache):
        if report is not None:
            report.cache = cache   # counted while sampling (the progress line shows it)
        x = solve(velocity, x, times, on_step)
    watch.finish(x)
    if cache is not None:
        log.info("%s", cache.describe())
    out = {"samples": FLUX.to_raw(x.float()).cpu()}
    return out if latent is None else {**latent, **out}    # the input's noise_mask etc. go on, as core's
