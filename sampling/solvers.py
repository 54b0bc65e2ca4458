"""Fixed-grid ODE solvers for dx/dt = v(x, t) in data-time (0 = noise, 1 = data).

Every solver has the same signature: ``solver(velocity, x, times, callback=None) -> x``, and is
called under ``torch.no_grad()`` (``sample`` does); the solvers only add and scale tensors, so this
module does not import torch and nodes can list ``SOLVERS``.
- ``velocity(x, t)``: the (guided) model velocity at state x (B, C, h, w) and data-time t (a float).
- ``times``: increasing data-times, one per grid point; ``len(times) − 1`` steps.
- ``callback(i, x, t, v)``: called once per step i (0-based) with the state at the start of the
  step and the velocity there (the first evaluation of the step), before the update.
Adding a solver is adding one function here and one entry in ``SOLVERS``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from torch import Tensor

Velocity = Callable[["Tensor", float], "Tensor"]
StepCallback = Callable[[int, "Tensor", float, "Tensor"], None]


def denoised(x: Tensor, t: float, v: Tensor) -> Tensor:
    """Data estimate from a velocity: x + (1 − t)·v (exact for x_t = t·data + (1 − t)·noise)."""
    return x + (1.0 - t) * v


def _first_velocity(velocity: Velocity, x: Tensor, times: Sequence[float], i: int,
                    callback: StepCallback | None) -> Tensor:
    v = velocity(x, times[i])
    if callback is not None:
        callback(i, x, times[i], v)
    return v


def euler(velocity: Velocity, x: Tensor, times: Sequence[float],
          callback: StepCallback | None = None) -> Tensor:
    """Explicit Euler on the fixed grid (1 evaluation per step)."""
    for i in range(len(times) - 1):
        v = _first_velocity(velocity, x, times, i, callback)
        x = x + (times[i + 1] - times[i]) * v
    return x


def midpoint(velocity: Velocity, x: Tensor, times: Sequence[float],
             callback: StepCallback | None = None) -> Tensor:
    """Explicit midpoint rule, as torchdiffeq's fixed-grid ``midpoint`` the official sampler uses
    (2 evaluations per step)."""
    for i in range(len(times) - 1):
        h = times[i + 1] - times[i]
        v = _first_velocity(velocity, x, times, i, callback)
        # Half an Euler step, then the full step with the midpoint's velocity.
        x_mid = x + (0.5 * h) * v
        x = x + h * velocity(x_mid, times[i] + 0.5 * h)
    return x


def heun(velocity: Velocity, x: Tensor, times: Sequence[float],
         callback: StepCallback | None = None) -> Tensor:
    """Heun's method (explicit trapezoid), Karras et al. (2022) Algorithm 1 in velocity form
    (2 evaluations per step; the velocity is defined at t = 1, so the last step is Heun too)."""
    for i in range(len(times) - 1):
        h = times[i + 1] - times[i]
        v = _first_velocity(velocity, x, times, i, callback)
        # Euler predictor, then the trapezoid corrector.
        x_pred = x + h * v
        x = x + (0.5 * h) * (v + velocity(x_pred, times[i + 1]))
    return x


def _log_snr(t: float) -> float:
    """λ(t) = log(α/σ) with α = t (data) and σ = 1 − t (noise); −inf at t = 0, +inf at t = 1."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def dpmpp_2m(velocity: Velocity, x: Tensor, times: Sequence[float],
             callback: StepCallback | None = None) -> Tensor:
    """DPM-Solver++(2M), Lu et al. (2022) "DPM-Solver++" Algorithm 2, in flow form (1 evaluation per step).

    Derivation: the linear path is x_t = α_t·D + σ_t·ε with α_t = t, σ_t = 1 − t, and the data
    prediction is D = x + (1 − t)·v. With λ = log(α/σ) and h = λ₁ − λ₀ the exact solution of the
    data-prediction ODE gives x₁ = (σ₁/σ₀)·x₀ + α₁·(1 − e^{−h})·D̂, where D̂ = D₀ for the first-order
    step (identical to an Euler step on this path) and D̂ = (1 + 1/(2r))·D₀ − 1/(2r)·D₋₁ with
    r = h₋₁/h for the multistep second-order step. The first step (no history, or λ₀ = −∞ at pure
    noise) and the last step (σ₁ = 0, h = ∞, x₁ = D₀) are first order, as in the paper.
    """
    d_prev, h_prev = None, None
    for i in range(len(times) - 1):
        t0, t1 = times[i], times[i + 1]
        v = _first_velocity(velocity, x, times, i, callback)
        d0 = denoised(x, t0, v)
        lam0, lam1 = _log_snr(t0), _log_snr(t1)
        h = lam1 - lam0
        if t1 >= 1.0:
            x = d0  # σ₁ = 0: the step lands on the data prediction
        else:
            d_hat = d0
            if d_prev is not None and math.isfinite(h_prev) and math.isfinite(h):
                r = h_prev / h
                d_hat = (1.0 + 0.5 / r) * d0 - (0.5 / r) * d_prev
            # α₁·(1 − e^{−h}) = t₁ − t₀·σ₁/σ₀ (also when λ₀ = −∞, i.e. t₀ = 0)
            x = ((1.0 - t1) / (1.0 - t0)) * x + (t1 - t0 * (1.0 - t1) / (1.0 - t0)) * d_hat
        d_prev, h_prev = d0, h
    return x


SOLVERS: dict[str, Callable[..., "Tensor"]] = {
    "euler": euler,
    "midpoint": midpoint,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
}


def get_solver(name: str) -> Callable[..., "Tensor"]:
    """The solver function for ``name``; ValueError lists the allowed names."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}") from None
