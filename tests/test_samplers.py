"""Schedules, solvers, CFG combination and ``sample(...)`` against independent references.

The references here are written from the research notes (research/newbie-model.md §8) and from
the papers' formulas, not from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from nextdit_nodes.samplers.guidance import combine_cfg
from nextdit_nodes.samplers.schedule import shift_time, shifted_sigma, sigma_from_time, time_grid
from nextdit_nodes.samplers.solvers import SOLVERS, dpmpp_2m, euler, get_solver, heun, midpoint

# ---- schedule ------------------------------------------------------------------------------------


def test_grid_is_the_official_shifted_linspace():
    steps, s = 17, 6.0
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)  # official: num_steps = steps + 1 points
    reference = u / (u + s - s * u)
    assert torch.allclose(torch.tensor(time_grid(steps, s), dtype=torch.float64), reference, atol=1e-12)


def test_sigma_form_matches_comfyui_time_snr_shift():
    # ComfyUI ModelSamplingDiscreteFlow: sigma = alpha*u / (1 + (alpha - 1)*u) on the noise fraction u.
    for u in (0.0, 0.05, 0.3, 0.77, 1.0):
        comfy = 6.0 * u / (1 + 5.0 * u)
        assert shifted_sigma(u, 6.0) == pytest.approx(comfy, abs=1e-15)
        assert sigma_from_time(shift_time(1.0 - u, 6.0)) == pytest.approx(comfy, abs=1e-12)


def test_img2img_grid_starts_exactly_at_one_minus_denoise_on_the_same_curve():
    full = time_grid(10, 6.0)
    assert time_grid(10, 6.0, 0.0) == full
    grid = time_grid(8, 6.0, 0.35)
    assert grid[0] == 0.35 and grid[-1] == 1.0 and len(grid) == 9
    assert all(a < b for a, b in zip(grid, grid[1:]))
    # Unshifting gives evenly spaced points.
    unshifted = [shift_time(t, 1 / 6.0) for t in grid]
    gaps = [b - a for a, b in zip(unshifted, unshifted[1:])]
    assert max(gaps) - min(gaps) < 1e-12


def test_grid_rejects_bad_settings():
    with pytest.raises(ValueError, match="steps"):
        time_grid(0, 6.0)
    with pytest.raises(ValueError, match="shift"):
        time_grid(4, 0.0)
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        get_solver("rk4")


# ---- solvers: hand-computed steps on an analytic field ---------------------------------------


def _field(x, t):  # dx/dt = -x + t  (a linear ODE)
    return -x + t


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun"])
def test_one_step_matches_the_textbook_formula(solver):
    x0, t0, t1 = torch.tensor([0.5, -2.0], dtype=torch.float64), 0.2, 0.7
    h = t1 - t0
    k1 = -x0 + t0
    expected = {
        "euler": x0 + h * k1,
        "midpoint": x0 + h * (-(x0 + h / 2 * k1) + (t0 + h / 2)),
        "heun": x0 + h / 2 * (k1 + (-(x0 + h * k1) + t1)),
    }[solver]
    assert torch.allclose(SOLVERS[solver](_field, x0, [t0, t1]), expected, atol=1e-14)


def test_dpmpp_2m_matches_the_paper_in_lambda_form():
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) with α = t, σ = 1 − t, λ = log(α/σ), written here
    with exp/expm1 as in the paper, against the solver's simplified algebra."""
    times = [0.1, 0.3, 0.55, 0.8]
    x = torch.tensor([0.4, -1.3], dtype=torch.float64)
    lam = [math.log(t / (1 - t)) for t in times]
    xs, d_prev = x.clone(), None
    for i in range(3):
        t0, t1 = times[i], times[i + 1]
        d0 = xs + (1 - t0) * _field(xs, t0)
        h = lam[i + 1] - lam[i]
        if d_prev is None:
            d = d0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * d0 - 1 / (2 * r) * d_prev
        xs = (1 - t1) / (1 - t0) * xs - t1 * math.expm1(-h) * d
        d_prev = d0
    assert torch.allclose(dpmpp_2m(_field, x, times), xs, atol=1e-13)


def test_dpmpp_2m_first_step_from_pure_noise_is_an_euler_step_and_ends_on_the_data_estimate():
    x = torch.tensor([0.9, -0.2], dtype=torch.float64)
    assert torch.allclose(dpmpp_2m(_field, x, [0.0, 0.4]), euler(_field, x, [0.0, 0.4]), atol=1e-14)
    # Last step (σ₁ = 0): x₁ = D = x + (1 − t)·v
    assert torch.allclose(dpmpp_2m(_field, x, [0.6, 1.0]), x + 0.4 * _field(x, 0.6), atol=1e-14)


# Gaussian data N(μ, s²) per dimension: the probability-flow velocity of x_t = t·data + (1−t)·noise
# is v = μ + (t·s² − (1 − t)) / (t²s² + (1 − t)²) · (x − tμ), and the exact flow maps noise z to
# μ + s·z (x_t = tμ + sqrt(t²s² + (1−t)²)·z).
_MU = torch.tensor([0.7, -0.3, 1.2], dtype=torch.float64)
_S = torch.tensor([0.5, 1.5, 0.8], dtype=torch.float64)


def _gaussian_velocity(x, t):
    return _MU + (t * _S**2 - (1 - t)) / (t**2 * _S**2 + (1 - t) ** 2) * (x - t * _MU)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("dpmpp_2m", 2)])
@pytest.mark.parametrize("shift", [1.0, 6.0])
def test_convergence_order_on_the_gaussian_flow(solver, order, shift):
    z = torch.tensor([0.3, -1.1, 0.8], dtype=torch.float64)
    exact = _MU + _S * z
    errors = [(SOLVERS[solver](_gaussian_velocity, z, time_grid(n, shift)) - exact).norm().item()
              for n in (128, 256)]
    observed = math.log2(errors[0] / errors[1])
    # dpmpp_2m's first (λ = −∞) and last (σ = 0) steps are first order: it approaches 2 from below.
    assert observed > order - (0.5 if solver == "dpmpp_2m" else 0.15), (solver, errors)
    assert errors[1] < (2e-3 if order == 2 else 3e-2)


def test_callback_sees_each_step_start_and_its_velocity():
    seen = []
    x = torch.tensor([1.0], dtype=torch.float64)
    midpoint(_field, x, [0.0, 0.5, 1.0], lambda i, xi, ti, vi: seen.append((i, ti, vi.clone())))
    assert [s[:2] for s in seen] == [(0, 0.0), (1, 0.5)]
    assert torch.allclose(seen[0][2], _field(x, 0.0))


# ---- CFG combination ---------------------------------------------------------------------------


def _official_cfg(cond, uncond, scale, renorm):
    """NB-repo forward_with_cfg for ONE sample (its `if` on the norms needs batch 1)."""
    half = uncond + scale * (cond - uncond)
    if renorm > 0:
        max_new = torch.linalg.vector_norm(cond) * renorm
        new = torch.linalg.vector_norm(half)
        if new >= max_new:
            half = half * (max_new / new)
    return half


@pytest.mark.parametrize("renorm", [0.0, 1.0, 5.0])
def test_combine_cfg_is_the_official_formula_per_sample(renorm):
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 4, 2, 2, generator=g)
    uncond = torch.randn(3, 4, 2, 2, generator=g) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1, 1)
    out = combine_cfg(cond, uncond, 4.0, renorm)
    # Guided/cond norm ratios are about 4.0, 5.6 and 10.5: renorm 5 scales samples 1 and 2 only.
    plain = uncond + 4.0 * (cond - uncond)
    scaled = [not torch.allclose(out[b], plain[b]) for b in range(3)]
    assert scaled == {0.0: [False] * 3, 1.0: [True] * 3, 5.0: [False, True, True]}[renorm]
    for b in range(3):
        assert torch.allclose(out[b], _official_cfg(cond[b], uncond[b], 4.0, renorm), atol=1e-6)
