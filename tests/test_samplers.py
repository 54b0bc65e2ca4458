"""Schedules, solvers, CFG combination and ``sample(...)`` against independent references.

The references here are written from the official code as docs/newbie-image.md §8 states it and from
the papers' formulas, not from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from factories import random_dit, tiny_params, with_guidance

from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import NonFiniteError, sample
from nextdit_nodes.text.conditioning import read_entries
from nextdit_nodes.sampling.guidance import GuidedVelocity, combine_cfg
from nextdit_nodes.sampling.schedule import shift_time, shifted_sigma, sigma_from_time, time_grid
from nextdit_nodes.sampling.solvers import SOLVERS, dpmpp_2m, euler, get_solver, midpoint

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
    """The official forward_with_cfg for ONE sample (its `if` on the norms needs batch 1)."""
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


# ---- sample(...) on a tiny random Next-DiT against an independent official reference ---------

_SCALE, _SHIFT = 0.3611, 0.1159  # FLUX VAE constants (docs/newbie-image.md §7)


def _prompt(params, length, seed, pad=0):
    """(cap_feats (L, cap_dim), pooled (clip_dim,)) of one random prompt; our CONDITIONING entry
    carries ``pad`` extra garbage tokens masked out."""
    g = torch.Generator().manual_seed(seed)
    feats, pooled = torch.randn(length, params.cap_dim, generator=g), torch.randn(params.clip_dim, generator=g)
    garbage = 1e3 * torch.randn(pad, params.cap_dim, generator=g)
    mask = torch.cat([torch.ones(length), torch.zeros(pad)])
    entry = [torch.cat([feats, garbage])[None], {"pooled_output": pooled[None], "attention_mask": mask[None],
                                                  "gemma_text": "x", "jina_text": "x", "prompt_warnings": []}]
    return (feats, pooled), entry


def _official_sampler(model, noise, conds, unconds, steps, shift, cfg, renorm, trunc, guidance=None,
                      start_latent=None, t_start=0.0):
    """The official demo sampling, written from docs/newbie-image.md §8: linspace(0, 1, steps+1) shifted by
    t/(t + s − s t), torchdiffeq midpoint on that grid, forward_with_cfg per evaluation with batch 1
    and SEPARATE unpadded forwards for cond and uncond; raw = x/0.3611 + 0.1159."""
    if t_start == 0.0:
        u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    else:  # img2img: evenly spaced unshifted points from the one whose shifted time is t_start
        u0 = shift * t_start / (1 + (shift - 1) * t_start)
        u = torch.linspace(u0, 1, steps + 1, dtype=torch.float64)
    ts = (u / (u + shift - shift * u)).tolist()

    def forward(x1, t, prompt):
        feats, pooled = prompt
        g = None if guidance is None else torch.tensor([guidance])
        return model(x1, torch.tensor([t], dtype=torch.float32), feats[None],
                     torch.ones(1, feats.shape[0], dtype=torch.bool), pooled[None], g)

    def drift(x, t):
        out = []
        for b in range(x.shape[0]):
            x1 = x[b:b + 1]
            cond_eps = forward(x1, t, conds[b])
            if t < trunc and cfg != 1:
                uncond_eps = forward(x1, t, unconds[b])
                half = uncond_eps + cfg * (cond_eps - uncond_eps)
                if renorm > 0:
                    max_new = torch.linalg.vector_norm(cond_eps) * renorm
                    new = torch.linalg.vector_norm(half)
                    if new >= max_new:
                        half = half * (max_new / new)
            else:
                half = cond_eps
            out.append(half)
        return torch.cat(out)

    x = noise.clone() if start_latent is None else t_start * start_latent + (1 - t_start) * noise
    with torch.no_grad():
        for t0, t1 in zip(ts, ts[1:]):
            dt = t1 - t0
            x = x + dt * drift(x + 0.5 * dt * drift(x, t0), t0 + 0.5 * dt)
    return x / _SCALE + _SHIFT


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def tiny_model():
    return random_dit(tiny_params(), seed=3)


@pytest.mark.parametrize("cfg,renorm,trunc", [(4.0, 0.0, 1.0), (4.0, 1.0, 1.0), (4.0, 0.0, 0.3), (1.0, 0.0, 1.0)],
                         ids=["plain", "renorm", "truncated", "no-cfg"])
def test_sample_matches_official_midpoint_sampler_with_cfg(tiny_model, cfg, renorm, trunc):
    p = tiny_model.params
    pos, pos_entry = _prompt(p, 7, seed=1, pad=3)     # different caption lengths; ours carries padding
    neg, neg_entry = _prompt(p, 3, seed=2)
    seed, steps, shift = 1234, 4, 6.0
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator("cpu").manual_seed(seed))  # KSampler's noise
    expected = _official_sampler(tiny_model, noise, [pos, pos], [neg, neg], steps, shift, cfg, renorm, trunc)
    out = sample(tiny_model, [pos_entry], [neg_entry], SamplerSettings(steps=steps, solver="midpoint", shift=shift, cfg=cfg, renorm_cfg=renorm, cfg_trunc=trunc),
                 width=64, height=64, seed=seed, batch_size=2)
    assert out["samples"].shape == (2, 16, 8, 8) and out["samples"].dtype == torch.float32
    assert _max_rel(out["samples"], expected) < 1e-4


def test_cfg_changes_the_result_and_truncation_matters(tiny_model):
    """Guard against a reference and sampler that would agree by both ignoring a setting."""
    p = tiny_model.params
    _, pos_entry = _prompt(p, 5, seed=1)
    _, neg_entry = _prompt(p, 2, seed=2)
    run = lambda **kw: sample(tiny_model, [pos_entry], [neg_entry],  # noqa: E731
                              SamplerSettings(**{"steps": 3, "solver": "midpoint", "cfg": 4.0, "renorm_cfg": 0.0,
                                                 "cfg_trunc": 1.0, **kw}), width=64, height=64, seed=0)["samples"]
    base = run()
    assert _max_rel(run(cfg=1.0), base) > 1e-2
    assert _max_rel(run(cfg_trunc=0.2), base) > 1e-3
    assert _max_rel(run(renorm_cfg=1.0), base) > 1e-3


def test_batch_prompts_and_guidance_match_reference(tiny_model):
    """One prompt per latent (n = batch) and a distilled guidance scale combined with CFG."""
    p = with_guidance(tiny_params())
    model = random_dit(p, seed=4)
    prompts = [_prompt(p, n, seed=10 + n) for n in (6, 2)]
    negs = [_prompt(p, n, seed=20 + n) for n in (1, 4)]
    entry = lambda ps: [torch.nn.utils.rnn.pad_sequence([f for (f, _), _ in ps], batch_first=True),  # noqa: E731
                        {"pooled_output": torch.stack([q for (_, q), _ in ps]),
                         "attention_mask": torch.nn.utils.rnn.pad_sequence(
                             [torch.ones(f.shape[0]) for (f, _), _ in ps], batch_first=True)}]
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator("cpu").manual_seed(7))
    expected = _official_sampler(model, noise, [a for a, _ in prompts], [a for a, _ in negs], 3, 6.0,
                                 3.0, 0.0, 1.0, guidance=2.5)
    out = sample(model, [entry(prompts)], [entry(negs)], SamplerSettings(steps=3, solver="midpoint", cfg=3.0, guidance=2.5, cfg_trunc=1.0),
                 width=64, height=64, seed=7, batch_size=2)
    assert _max_rel(out["samples"], expected) < 1e-4
    no_guidance = sample(model, [entry(prompts)], [entry(negs)], SamplerSettings(steps=3, solver="midpoint", cfg=3.0, cfg_trunc=1.0),
                         width=64, height=64, seed=7, batch_size=2)
    assert _max_rel(no_guidance["samples"], expected) > 1e-3


def test_img2img_starts_where_core_ksampler_starts_on_the_shifted_grid(tiny_model):
    p = tiny_model.params
    pos, pos_entry = _prompt(p, 5, seed=1)
    raw = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(9))
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator("cpu").manual_seed(5))
    # Core's KSampler at 3 steps and denoise 0.6 keeps the last 3 of 5 steps: unshifted noise 0.6,
    # shifted 6·0.6/(1 + 5·0.6) = 0.9, so data-time 0.1.
    expected = _official_sampler(tiny_model, noise, [pos], None, 3, 6.0, 1.0, 0.0, 1.0,
                                 start_latent=(raw - _SHIFT) * _SCALE, t_start=0.1)
    out = sample(tiny_model, [pos_entry], None,
                 SamplerSettings(steps=3, solver="midpoint", cfg=1.0, cfg_trunc=1.0, denoise=0.6),
                 width=64, height=64, seed=5, latent={"samples": raw})
    assert _max_rel(out["samples"], expected) < 1e-4


def test_denoise_zero_returns_the_input_latent(tiny_model):
    _, pos_entry = _prompt(tiny_model.params, 5, seed=1)
    raw = torch.randn(2, 16, 8, 8)
    out = sample(tiny_model, [pos_entry], None, SamplerSettings(steps=4, solver="euler", cfg=1.0, cfg_trunc=1.0, denoise=0.0),
                 width=64, height=64, seed=0, latent={"samples": raw})
    assert torch.equal(out["samples"], raw) and out["samples"] is not raw


def test_packed_cfg_equals_two_separate_forwards(tiny_model):
    p = tiny_model.params
    (pf, pp), pos_entry = _prompt(p, 9, seed=1)
    (nf, npool), neg_entry = _prompt(p, 2, seed=2, pad=5)
    pos = read_entries([pos_entry], 2, p.cap_dim, p.clip_dim)
    neg = read_entries([neg_entry], 2, p.cap_dim, p.clip_dim)
    velocity = GuidedVelocity(tiny_model, pos, neg, SamplerSettings(cfg=5.0, cfg_trunc=1.0))
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.37)
    with torch.no_grad():
        v_cond = tiny_model(x, t, pf.expand(2, -1, -1), torch.ones(2, 9, dtype=torch.bool), pp.expand(2, -1))
        v_uncond = tiny_model(x, t, nf.expand(2, -1, -1), torch.ones(2, 2, dtype=torch.bool), npool.expand(2, -1))
        packed = velocity(x, 0.37)
    assert _max_rel(packed, v_uncond + 5.0 * (v_cond - v_uncond)) < 1e-5


def test_core_comfy_conditioning_with_only_pooled_output_samples(tiny_model):
    p = tiny_model.params
    (feats, pooled), ours = _prompt(p, 6, seed=1)
    core = [[feats[None].clone(), {"pooled_output": pooled[None].clone()}]]  # no mask, no extra keys
    (nf, npool), neg_ours = _prompt(p, 3, seed=2)
    neg_core = [[nf[None].clone(), {"pooled_output": npool[None].clone()}]]
    settings, size = SamplerSettings(steps=2, solver="euler", cfg=4.0, cfg_trunc=1.0), dict(width=64, height=64, seed=11)
    out_core = sample(tiny_model, core, neg_core, settings, **size)["samples"]
    out_ours = sample(tiny_model, [ours], [neg_ours], settings, **size)["samples"]
    assert torch.isfinite(out_core).all()
    assert _max_rel(out_core, out_ours) < 1e-6


def test_callback_raising_at_step_k_stops_there_and_leaves_the_model_usable(tiny_model):
    p = tiny_model.params
    _, pos_entry = _prompt(p, 4, seed=1)
    calls, seen = [], []
    handle = tiny_model.register_forward_hook(lambda *_: calls.append(1))

    def stop_at_2(step, total, x0):
        seen.append((step, total, tuple(x0.shape)))
        if step == 2:
            raise KeyboardInterrupt("user cancelled")

    args = (SamplerSettings(steps=5, solver="midpoint", cfg=1.0, cfg_trunc=1.0),)
    size = dict(width=64, height=64, seed=3)
    try:
        before = sample(tiny_model, [pos_entry], None, *args, **size)["samples"]
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            sample(tiny_model, [pos_entry], None, *args, **size, callback=stop_at_2)
        assert seen == [(0, 5, (1, 16, 8, 8)), (1, 5, (1, 16, 8, 8)), (2, 5, (1, 16, 8, 8))]
        assert len(calls) == 2 + 2 + 1  # steps 0 and 1 (two evaluations each), step 2's first
    finally:
        handle.remove()
    after = sample(tiny_model, [pos_entry], None, *args, **size)["samples"]
    assert torch.equal(before, after)
    assert not tiny_model.training and not any(q.requires_grad for q in tiny_model.parameters())


def test_callback_x0_estimate_is_x_plus_one_minus_t_times_v(tiny_model):
    _, pos_entry = _prompt(tiny_model.params, 4, seed=1)
    estimates = []
    out = sample(tiny_model, [pos_entry], None, SamplerSettings(steps=3, solver="euler", cfg=1.0, cfg_trunc=1.0),
                 width=64, height=64, seed=3, callback=lambda s, n, x0: estimates.append(x0.clone()))
    # Euler's last step from t to 1 is x + (1 − t)·v: its x0 estimate IS the final latent.
    assert len(estimates) == 3
    assert _max_rel(out["samples"], estimates[-1] / _SCALE + _SHIFT) < 1e-6


def test_injected_nan_raises_the_documented_error_naming_the_step(tiny_model):
    _, pos_entry = _prompt(tiny_model.params, 4, seed=1)
    calls = []

    def poison(module, inputs, output):
        calls.append(1)
        if len(calls) == 4:  # euler: one evaluation per step, so step 4
            return output * float("nan")
        return output

    handle = tiny_model.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteError, match=r"step 4 of 6.*(fp32|bf16)"):
            sample(tiny_model, [pos_entry], None, SamplerSettings(steps=6, solver="euler", cfg=1.0, cfg_trunc=1.0),
                   width=64, height=64, seed=3)
    finally:
        handle.remove()


def test_guidance_on_weights_without_embedder_is_refused(tiny_model):
    _, pos_entry = _prompt(tiny_model.params, 4, seed=1)
    with pytest.raises(ValueError, match="no guidance embedder"):
        sample(tiny_model, [pos_entry], None,
               SamplerSettings(steps=2, solver="euler", cfg=1.0, guidance=3.5, cfg_trunc=1.0), width=64, height=64, seed=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=60), "multiple of 16"), (dict(height=99999), "multiple of 16"), (dict(steps=0), "steps"),
    (dict(cfg=4.0, negative=None), "negative"), (dict(solver="rk4"), "unknown solver"),
    (dict(denoise=0.5), "needs an input latent"), (dict(shift=0.0), "shift"),
])
def test_bad_settings_fail_before_any_model_call(tiny_model, kwargs, match):
    _, pos_entry = _prompt(tiny_model.params, 4, seed=1)
    args = dict(model=tiny_model, positive=[pos_entry], negative=None, width=64, height=64, seed=0, steps=2,
                solver="euler", cfg=1.0, cfg_trunc=1.0)
    calls = []
    handle = tiny_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match=match):
            settings, rest = SamplerSettings.take({**args, **kwargs})
            sample(settings=settings, **rest)
    finally:
        handle.remove()
    assert not calls


def test_wrong_text_encoder_width_is_a_clear_error(tiny_model):
    bad = [[torch.randn(1, 5, 17), {"pooled_output": torch.randn(1, 32)}]]
    with pytest.raises(ValueError, match="caption features are 17 wide"):
        sample(tiny_model, bad, None, SamplerSettings(steps=2, solver="euler", cfg=1.0, cfg_trunc=1.0),
               width=64, height=64, seed=0)


@pytest.mark.parametrize("deferred", [False, True], ids=["cpu-immediate", "accelerator-deferred"])
def test_non_finite_watch_names_the_first_bad_step(deferred):
    """The deferred path (used on GPUs: no per-step host sync) reports the same step as the CPU path."""
    from nextdit_nodes.sampling.sample import _NonFiniteWatch

    def run(bad_x_at=None, bad_v_at=None, bad_final=False):
        watch = _NonFiniteWatch(torch.device("cpu"), 5, torch.float16, deferred=deferred)
        ok, nan = torch.zeros(2), torch.tensor([0.0, float("nan")])
        for step in range(5):
            watch.observe(step, nan if step == bad_x_at else ok, nan if step == bad_v_at else ok)
        watch.finish(nan if bad_final else ok)

    run()
    with pytest.raises(NonFiniteError, match="step 3 of 5 .*float16"):
        run(bad_v_at=2)
    with pytest.raises(NonFiniteError, match="step 2 of 5"):
        run(bad_x_at=2, bad_v_at=3)          # the state entering step index 2 was made by step 2 (1-based)
    with pytest.raises(NonFiniteError, match="step 5 of 5"):
        run(bad_final=True)
    with pytest.raises(NonFiniteError, match="input latent"):
        run(bad_x_at=0)


def test_several_conditioning_entries_are_averaged_in_one_forward(tiny_model):
    """ComfyUI averages the predictions of CONDITIONING entries without areas; we pack them all."""
    p = tiny_model.params
    (fa, pa), entry_a = _prompt(p, 6, seed=1)
    (fb, pb), entry_b = _prompt(p, 3, seed=2, pad=2)
    (fn, pn), neg_entry = _prompt(p, 4, seed=3)
    pos = read_entries([entry_a, entry_b], 1, p.cap_dim, p.clip_dim)
    neg = read_entries([neg_entry], 1, p.cap_dim, p.clip_dim)
    velocity = GuidedVelocity(tiny_model, pos, neg, SamplerSettings(cfg=3.0, cfg_trunc=1.0))
    x, t = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([0.5])
    calls = []
    handle = tiny_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            packed = velocity(x, 0.5)
    finally:
        handle.remove()
    ones = lambda f: torch.ones(1, f.shape[0], dtype=torch.bool)  # noqa: E731
    with torch.no_grad():
        v_a = tiny_model(x, t, fa[None], ones(fa), pa[None])
        v_b = tiny_model(x, t, fb[None], ones(fb), pb[None])
        v_n = tiny_model(x, t, fn[None], ones(fn), pn[None])
    assert len(calls) == 1
    assert _max_rel(packed, v_n + 3.0 * ((v_a + v_b) / 2 - v_n)) < 1e-5


def test_lumina2_shaped_weights_ignore_the_pooled_vector():
    model = random_dit(tiny_params(clip_dim=None), seed=6)
    feats = torch.randn(1, 5, model.params.cap_dim)
    with_pooled = [[feats, {"pooled_output": torch.randn(1, 1024)}]]   # any width: unused
    without = [[feats.clone(), {}]]
    args = (SamplerSettings(steps=2, solver="euler", cfg=1.0, cfg_trunc=1.0),)
    size = dict(width=64, height=64, seed=2)
    assert torch.equal(sample(model, with_pooled, None, *args, **size)["samples"],
                       sample(model, without, None, *args, **size)["samples"])
