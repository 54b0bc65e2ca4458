"""Timestep ranges whose boundary falls on a step of the grid apply as core's KSampler applies
them: core compares the step's float32 sigma (a tensor) with each entry's percent_to_sigma bound
(a Python float), which torch does in float32 (samplers.py ``get_area_and_mult``: an entry is
skipped when sigma > timestep_start or sigma < timestep_end).

The reference is written here: Euler in sigma space over core's ``simple`` schedule, with the
sigma table computed in float32 as ``ModelSamplingDiscreteFlow`` computes it.
"""

from __future__ import annotations

import pytest
import torch
from factories import random_dit, tiny_params
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import sample
from nextdit_nodes.vae.latent_format import FLUX

SHIFT = 6.0


@pytest.fixture(scope="module")
def model():
    return random_dit(tiny_params(), seed=11)


def entry(params, seed, **extras):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 5, params.cap_dim, generator=g),
            {"pooled_output": torch.randn(1, params.clip_dim, generator=g), **extras}]


def core_sigma_table() -> torch.Tensor:
    """ModelSamplingDiscreteFlow(shift 6).sigmas: time_snr_shift over arange(1, 1001) / 1000, in float32."""
    t = torch.arange(1, 1001, 1) / 1000 * 1000 / 1000
    return SHIFT * t / (1 + (SHIFT - 1) * t)


def core_simple_sigmas(steps: int) -> torch.Tensor:
    table = core_sigma_table()
    return torch.stack([table[-(1 + int(x * len(table) / steps))] for x in range(steps)] + [torch.tensor(0.0)])


def percent_to_sigma(percent: float) -> float:
    """Core's ModelSamplingDiscreteFlow.percent_to_sigma: a Python float."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    u = 1.0 - percent
    return SHIFT * u / (1 + (SHIFT - 1) * u)


@torch.no_grad()
def core_reference(model, entries, steps: int, seed: int, shape=(1, 16, 8, 8)) -> torch.Tensor:
    sigmas = core_simple_sigmas(steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    for i in range(steps):
        sigma, sigma_next = sigmas[i:i + 1], float(sigmas[i + 1])
        total, weight = torch.zeros_like(x), 0.0
        for feats, extras in entries:
            if sigma[0] > percent_to_sigma(extras["start_percent"]) or sigma[0] < percent_to_sigma(extras["end_percent"]):
                continue  # float32 tensor against a Python float: compared in float32, as in core
            mask = torch.ones(feats.shape[:2], dtype=torch.bool)
            s = float(sigma[0])
            v = model(x, torch.tensor([1.0 - s]), feats, mask, extras["pooled_output"])
            total, weight = total + (x + s * v), weight + 1.0
        denoised = total / weight
        s = float(sigma[0])
        x = x + (x - denoised) / s * (sigma_next - s)
    return x


@pytest.mark.parametrize("steps,boundary", [(4, 0.5), (8, 0.25), (8, 0.75), (5, 0.4)])
def test_ranges_split_on_a_grid_point_equal_core(model, steps, boundary):
    p = model.params
    entries = [entry(p, 1, start_percent=0.0, end_percent=boundary),
               entry(p, 2, start_percent=boundary, end_percent=1.0)]
    settings = SamplerSettings(steps=steps, solver="euler", shift=SHIFT, cfg=1.0, cfg_trunc=1.0)
    ours = FLUX.from_raw(sample(model, entries, None, settings, width=64, height=64, seed=3)["samples"])
    expected = core_reference(model, entries, steps, 3)
    scale = float(expected.abs().max())
    assert float((ours - expected).abs().max()) <= 1e-6 * max(scale, 1.0)
