"""The rectified-flow time grid with NewBie's shift, as tiny pure functions.

Conventions (the official NewBie-image-Exp0.1 `transport/path.py`): data-time t runs from 0 (pure
noise) to 1 (clean data); x_t = t·data + (1 − t)·noise and the model predicts the velocity
v = data − noise. ComfyUI's sigma is the noise fraction, σ = 1 − t.

The official sampler (`transport/integrators.py`) takes ``num_steps`` evenly spaced points
u on [0, 1] and shifts them, ``t ← t / (t + s − s·t)``; the solver then steps between consecutive
points, so ``num_steps`` grid points are ``num_steps − 1`` solver steps. Here ``steps`` always
means solver steps (intervals).
"""

from __future__ import annotations

import struct


def shift_time(t: float, shift: float) -> float:
    """NewBie's time shift of a data-time t ∈ [0, 1]: t / (t + s − s·t). s > 1 spends more steps
    near the noise end. ``shift_time(·, 1/s)`` is its inverse."""
    return t / (t + shift - shift * t)


def sigma_from_time(t: float) -> float:
    """ComfyUI's sigma (noise fraction) of a data-time: σ = 1 − t."""
    return 1.0 - t


def shifted_sigma(u: float, shift: float) -> float:
    """The same curve in sigma form, ComfyUI's ``time_snr_shift``: σ = s·u / (1 + (s − 1)·u) for the
    unshifted noise fraction u = 1 − t. Equals ``1 − shift_time(1 − u, shift)``."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def percent_time(percent: float, shift: float) -> float:
    """The data-time at which a share ``percent`` of the sampling has passed, as core ComfyUI maps a
    conditioning's start/end percent on flow models (``ModelSamplingDiscreteFlow.percent_to_sigma``:
    σ = time_snr_shift(shift, 1 − percent), 0 % the first step, 100 % the end)."""
    if percent <= 0.0:
        return 0.0
    if percent >= 1.0:
        return 1.0
    return 1.0 - shifted_sigma(1.0 - percent, shift)


def percent_sigma(percent: float, shift: float) -> float:
    """Core ComfyUI's sigma for a conditioning's start/end percent on flow models
    (``ModelSamplingDiscreteFlow.percent_to_sigma``): 1 at 0 %, 0 at 100 %, time_snr_shift between."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return shifted_sigma(1.0 - percent, shift)


def float32(value: float) -> float:
    """``value`` rounded to float32, the precision core compares sigmas in. (One +, −, × or ÷ of
    float32 values done in float64 and rounded once is the float32 operation, exactly.)"""
    return struct.unpack("f", struct.pack("f", value))[0]


def core_step_sigma(t: float, shift: float) -> float:
    """The float32 sigma core's sampling holds for the grid point at data-time ``t``: its
    ``ModelSamplingDiscreteFlow`` table computes time_snr_shift in float32 from the unshifted
    fraction u (``(arange / 1000) * 1000 / 1000``, then ``shift·u / (1 + (shift − 1)·u)``)."""
    sigma = 1.0 - t
    u = float32(float32(float32(sigma / (shift - (shift - 1.0) * sigma)) * 1000.0) / 1000.0)
    if shift == 1.0:
        return u
    return float32(float32(float32(shift) * u) / float32(1.0 + float32(float32(shift - 1.0) * u)))


def denoise_start(denoise: float, steps: int, shift: float) -> float:
    """The data-time image-to-image starts at for ``denoise`` on core ComfyUI's scale.

    Core's KSampler (``KSampler.set_steps``) samples the last ``steps`` intervals of a
    ``int(steps / denoise)``-step schedule, so it starts at the unshifted noise fraction
    u = steps / int(steps / denoise) ≈ denoise, i.e. at σ = s·u / (1 + (s − 1)·u) (shift 6:
    denoise 0.1 starts at σ 0.4). Denoise above 0.9999 is text-to-image (t = 0), as in core."""
    if denoise > 0.9999:
        return 0.0
    return 1.0 - shifted_sigma(steps / int(steps / denoise), shift)


def time_grid(steps: int, shift: float, start: float = 0.0) -> list[float]:
    """``steps + 1`` increasing data-times from ``start`` to exactly 1.0 on the shifted grid.

    With ``start = 0`` this is the official grid (``linspace(0, 1, steps + 1)`` then shifted).
    For image-to-image (``start = 1 − denoise``) the evenly spaced points run from the unshifted
    position whose shifted time is ``start``, so the first point is exactly ``start`` and the
    spacing follows the same shifted curve.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive; got {shift}")
    if not 0.0 <= start < 1.0:
        raise ValueError(f"start time must be in [0, 1); got {start}")
    u0 = shift_time(start, 1.0 / shift)  # unshifted position of the start time
    grid = [shift_time(u0 + (1.0 - u0) * i / steps, shift) for i in range(steps + 1)]
    grid[0], grid[-1] = start, 1.0  # exact ends despite rounding
    return grid
