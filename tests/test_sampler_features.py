"""What NextDiT Sampler does with CONDITIONING and LATENT features beyond a plain prompt: timestep
ranges and strengths (honoured as core ComfyUI honours them), inpainting with a noise_mask (as
core's KSamplerX0Inpaint), and everything it cannot apply (refused with a message).

The references are written here independently of ``sampling/``: Euler in core's sigma space
(k-diffusion ``sample_euler``: d = (x − D)/σ, x += d·(σ' − σ)) over the model's denoised estimate
D = x − σ·(−v), with core's rules for which entries apply at σ and for the inpainting blend.
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


def entry(params, seed, length=5, **extras):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, length, params.cap_dim, generator=g)
    return [feats, {"pooled_output": torch.randn(1, params.clip_dim, generator=g), **extras}]


def core_sigmas(steps: int, denoise: float = 1.0) -> list[float]:
    """Core's ``simple`` schedule on ModelSamplingDiscreteFlow(shift 6): 1000 table points. With
    denoise < 1, KSampler.set_steps: the last ``steps`` intervals of an int(steps/denoise)-step one."""
    if denoise < 1.0:
        return core_sigmas(int(steps / denoise))[-(steps + 1):]
    table = [SHIFT * (i / 1000) / (1 + (SHIFT - 1) * (i / 1000)) for i in range(1, 1001)]
    return [table[-(1 + int(x * 1000 / steps))] for x in range(steps)] + [0.0]


def percent_to_sigma(percent: float) -> float:
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    u = 1.0 - percent
    return SHIFT * u / (1 + (SHIFT - 1) * u)


def denoised(model, x, sigma, entries):
    """Core's combination of the entries that apply at sigma (strength-weighted mean of D)."""
    total, weight = torch.zeros_like(x), 0.0
    for feats, extras in entries:
        if sigma > percent_to_sigma(extras.get("start_percent", 0.0)) or \
                sigma < percent_to_sigma(extras.get("end_percent", 1.0)):
            continue
        mask = torch.ones(feats.shape[:2], dtype=torch.bool)
        v = model(x, torch.tensor([1.0 - sigma]), feats, mask, extras["pooled_output"])
        strength = extras.get("strength", 1.0)
        total, weight = total + strength * (x + sigma * v), weight + strength
    return total / weight


@torch.no_grad()
def reference(model, entries, steps, seed, latent=None, mask=None, shape=(1, 16, 8, 8), denoise=1.0):
    sigmas = core_sigmas(steps, denoise)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    # Core's flow noise scaling at the first sigma (pure noise at 1).
    x = noise if latent is None else sigmas[0] * noise + (1 - sigmas[0]) * latent
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_in = x if mask is None else x * mask + (s * noise + (1 - s) * latent) * (1 - mask)
        d_est = denoised(model, x_in, s, entries)
        if mask is not None:
            d_est = d_est * mask + latent * (1 - mask)
        x = x + (x - d_est) / s * (s_next - s)
    return x


def run(model, positive, steps=5, seed=3, **kwargs):
    settings, rest = SamplerSettings.take(dict(steps=steps, solver="euler", shift=SHIFT, cfg=1.0, cfg_trunc=1.0,
                                               **kwargs))
    return sample(model, positive, None, settings, width=64, height=64, seed=seed, **rest)


def test_timestep_ranges_switch_prompts_as_core_does(model):
    p = model.params
    # Five steps: the 50 % boundary falls between grid points, so both sides agree on every step.
    a = entry(p, 1, start_percent=0.0, end_percent=0.5)
    b = entry(p, 2, length=7, start_percent=0.5, end_percent=1.0)
    ours = FLUX.from_raw(run(model, [a, b])["samples"])
    expected = reference(model, [a, b], 5, 3)
    assert torch.allclose(ours, expected, atol=1e-4), float((ours - expected).abs().max())
    combined = FLUX.from_raw(run(model, [entry(p, 1), entry(p, 2, length=7)])["samples"])
    assert (ours - combined).abs().max() > 1e-2          # the ranges change the result


def test_strengths_weight_the_average(model):
    p = model.params
    entries = [entry(p, 1, strength=1.0), entry(p, 2, strength=3.0)]
    ours = FLUX.from_raw(run(model, entries)["samples"])
    assert torch.allclose(ours, reference(model, entries, 5, 3), atol=1e-4)


def test_a_step_without_any_prompt_is_refused_before_the_model_runs(model):
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="without a prompt"):
            run(model, [entry(model.params, 1, start_percent=0.0, end_percent=0.3)])
    finally:
        handle.remove()
    assert not calls


@pytest.mark.parametrize("key,value,node", [
    ("area", (4, 4, 0, 0), "ConditioningSetArea"),
    ("mask", torch.ones(1, 8, 8), "ConditioningSetMask"),
    ("gligen", ("position", None, []), "GLIGENTextBoxApply"),
    ("guidance", 3.5, "FluxGuidance"),
    ("reference_latents", [torch.zeros(1, 16, 8, 8)], "'reference_latents'"),
])
def test_what_the_sampler_cannot_apply_is_refused_naming_the_node(model, key, value, node):
    with pytest.raises(ValueError) as raised:
        run(model, [entry(model.params, 1, **{key: value})])
    assert node in str(raised.value) and "core_model" in str(raised.value)


def test_a_controlnet_of_another_family_is_refused(model):
    # The pack's own ControlNets are applied (tests/test_controlnet_sampling.py); core's objects
    # for SD / FLUX ControlNets cannot run on a Next-DiT.
    with pytest.raises(ValueError, match="ControlNet of another model family"):
        run(model, [entry(model.params, 1, control=object())])


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_inpainting_keeps_the_unmasked_latent_and_matches_core(model, denoise):
    p = model.params
    torch.manual_seed(0)
    raw = torch.randn(1, 16, 8, 8) * 0.5
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1.0           # pixel-space mask, as SetLatentNoiseMask stores it
    out = sample(model, [entry(p, 4)], None, SamplerSettings(steps=5, solver="euler", shift=SHIFT, cfg=1.0, cfg_trunc=1.0, denoise=denoise),
                 width=64, height=64, seed=5, latent={"samples": raw, "noise_mask": mask})
    latent_mask = torch.nn.functional.interpolate(mask[:, None], size=(8, 8), mode="bilinear")
    keep = (latent_mask == 0).expand(1, 16, 8, 8)
    assert torch.allclose(out["samples"][keep], raw[keep], atol=1e-5)
    assert (out["samples"] - raw)[~keep].abs().max() > 1e-2
    assert out["noise_mask"] is mask                    # the mask goes on with the latent, as core's
    # Core's sigmas (with denoise < 1 the tail of a longer grid: 5 of 8 steps here).
    expected = reference(model, [entry(p, 4)], 5, 5, latent=FLUX.from_raw(raw), mask=latent_mask, denoise=denoise)
    assert torch.allclose(FLUX.from_raw(out["samples"]), expected, atol=1e-4)


@pytest.mark.parametrize("denoise,steps", [(0.1, 10), (0.3, 6), (0.6, 6)])
def test_img2img_of_a_100x76_image_starts_where_core_ksampler_starts(model, denoise, steps):
    # NextDiT VAE Encode crops a 100×76 image to 96×72 as core's VAEEncode does: a 12×9 latent, whose
    # odd side core's Lumina model pads (circular, to the patch size) and crops back in every call.
    # The reference pads and crops by hand around an even-sized call; its sigmas are core
    # KSampler's for this denoise (steps chosen so int(steps/denoise) divides 1000, as core's table).
    p = model.params
    raw = torch.randn(1, 16, 9, 12, generator=torch.Generator().manual_seed(2)) * 0.5
    out = sample(model, [entry(p, 4)], None,
                 SamplerSettings(steps=steps, solver="euler", shift=SHIFT, cfg=1.0, cfg_trunc=1.0, denoise=denoise),
                 width=96, height=72, seed=5, latent={"samples": raw})
    assert out["samples"].shape == (1, 16, 9, 12)

    def padded_model(x, t, feats, mask, pooled):
        wide = torch.cat([x, x[:, :, :1]], dim=2)          # one row wrapped around from the top
        return model(wide, t, feats, mask, pooled)[:, :, :9]

    expected = reference(padded_model, [entry(p, 4)], steps, 5, latent=FLUX.from_raw(raw), shape=(1, 16, 9, 12),
                         denoise=denoise)
    assert torch.allclose(FLUX.from_raw(out["samples"]), expected, atol=1e-4), \
        float((FLUX.from_raw(out["samples"]) - expected).abs().max())
    first_sigma = SHIFT * denoise / (1 + (SHIFT - 1) * denoise)       # 0.4, 0.72, 0.9
    assert core_sigmas(steps, denoise)[0] == pytest.approx(first_sigma, abs=1e-6)
