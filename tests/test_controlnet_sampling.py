"""ControlNets in CONDITIONING as core's Apply ControlNet puts them there, run by NextDiT Sampler:
against a core-style Euler reference (k-diffusion's sample_euler over core's sigmas, core's rule for
which ControlNet applies at σ), strength 0, start/end percent, stacking; and the CONTROL_NET handle's
core interface (pre_run / get_control)."""

from __future__ import annotations

import pytest
import torch
from factories import random_dit, tiny_params
from test_controlnet import random_controlnet
from test_sampler_features import core_sigmas, entry, percent_to_sigma, run

from nextdit_nodes.controlnet.apply import ActiveControl, controls_attached
from nextdit_nodes.controlnet.handle import ControlNetHandle
from nextdit_nodes.vae.latent_format import FLUX

P = tiny_params(n_layers=4)


class FakeVAE:
    """Encodes an IMAGE (B, H, W, 3) by 8x8 average pooling and a fixed mix to 16 raw channels."""

    class info:
        downscale = 8

    mix = torch.randn(16, 3, generator=torch.Generator().manual_seed(5))

    def encode(self, image):
        pooled = torch.nn.functional.avg_pool2d(image.movedim(-1, 1).float(), 8)
        return torch.einsum("oc,bchw->bohw", self.mix, pooled)


def control_image(seed=0):
    return torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(seed))


def apply_controlnet(conditioning, handle, image, strength, start=0.0, end=1.0, vae=None):
    """Core's ControlNetApplyAdvanced.apply_controlnet for one CONDITIONING (nodes.py)."""
    out = []
    for feats, extras in conditioning:
        extras = dict(extras)
        previous = extras.get("control")
        c_net = handle.copy().set_cond_hint(image.movedim(-1, 1), strength, (start, end), vae=vae or FakeVAE(),
                                            extra_concat=[])
        c_net.set_previous_controlnet(previous)
        extras["control"] = c_net
        extras["control_apply_to_uncond"] = False
        out.append([feats, extras])
    return out


@pytest.fixture(scope="module")
def model():
    return random_dit(P, seed=21)


def hint(seed=0):
    return FLUX.from_raw(FakeVAE().encode(control_image(seed)))


@torch.no_grad()
def core_reference(model, feats, pooled, controls, steps=5, seed=3):
    """Euler in core's sigma space; a ControlNet applies while percent_to_sigma(end) <= σ <=
    percent_to_sigma(start) (core's ControlBase.get_control)."""
    sigmas = core_sigmas(steps)
    x = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(feats.shape[:2], dtype=torch.bool)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        active = [ActiveControl(net, h, strength) for net, h, strength, start, end in controls
                  if percent_to_sigma(end) <= s <= percent_to_sigma(start)]
        with controls_attached(model, active):
            v = model(x, torch.tensor([1.0 - s]), feats, mask, pooled)
        d_est = x + s * v
        x = x + (x - d_est) / s * (s_next - s)
    return x


def test_sampler_runs_the_controlnet_like_core(model):
    net = random_controlnet(2, seed=31)
    base = entry(P, 1)
    positive = apply_controlnet([base], ControlNetHandle(net), control_image(), 0.8)
    ours = FLUX.from_raw(run(model, positive)["samples"])
    expected = core_reference(model, base[0], base[1]["pooled_output"], [(net, hint(), 0.8, 0.0, 1.0)])
    assert torch.allclose(ours, expected, atol=1e-4), float((ours - expected).abs().max())
    plain = FLUX.from_raw(run(model, [base])["samples"])
    assert (ours - plain).abs().max() > 1e-2


def test_start_and_end_percent_follow_cores_sigma_rule(model):
    # Five steps: core's sigmas 1, 0.96, 0.9, 0.8, 0.6; 30 % is σ 0.933 and 70 % σ 0.72, so the
    # ControlNet applies at the 3rd and 4th steps and no boundary falls on a grid point.
    net = random_controlnet(2, seed=32)
    base = entry(P, 2)
    positive = apply_controlnet([base], ControlNetHandle(net), control_image(1), 1.0, 0.3, 0.7)
    ours = FLUX.from_raw(run(model, positive)["samples"])
    expected = core_reference(model, base[0], base[1]["pooled_output"], [(net, hint(1), 1.0, 0.3, 0.7)])
    assert torch.allclose(ours, expected, atol=1e-4), float((ours - expected).abs().max())
    everywhere = FLUX.from_raw(run(model, apply_controlnet([base], ControlNetHandle(net), control_image(1),
                                                           1.0))["samples"])
    assert (ours - everywhere).abs().max() > 1e-3


def test_strength_zero_is_exactly_no_controlnet(model):
    base = entry(P, 3)
    positive = apply_controlnet([base], ControlNetHandle(random_controlnet(2, seed=33)), control_image(), 0.0)
    assert torch.equal(run(model, positive)["samples"], run(model, [base])["samples"])


def test_two_chained_controlnets_stack(model):
    a, b = random_controlnet(2, seed=34), random_controlnet(4, seed=35)
    base = entry(P, 4)
    positive = apply_controlnet([base], ControlNetHandle(a), control_image(2), 0.6)
    positive = apply_controlnet(positive, ControlNetHandle(b), control_image(3), 1.1, 0.0, 0.5)
    ours = FLUX.from_raw(run(model, positive)["samples"])
    expected = core_reference(model, base[0], base[1]["pooled_output"],
                              [(a, hint(2), 0.6, 0.0, 1.0), (b, hint(3), 1.1, 0.0, 0.5)])
    assert torch.allclose(ours, expected, atol=1e-4), float((ours - expected).abs().max())


def test_cfg_with_a_controlnet_on_both_branches(model):
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling.sample import sample

    net = random_controlnet(2, seed=36)
    pos, neg = apply_controlnet([entry(P, 5)], ControlNetHandle(net), control_image(), 0.9), None
    handle = pos[0][1]["control"]
    neg = [[entry(P, 6)[0], {**entry(P, 6)[1], "control": handle}]]   # core gives both the same handle
    settings = SamplerSettings(steps=3, solver="euler", shift=6.0, cfg=4.0, cfg_trunc=1.0)
    ours = sample(model, pos, neg, settings, width=64, height=64, seed=1)["samples"]
    with controls_attached(model, [ActiveControl(net, hint(), 0.9)]):   # every row, every step
        expected = sample(model, [entry(P, 5)], [entry(P, 6)], settings, width=64, height=64, seed=1)["samples"]
    assert torch.allclose(ours, expected, atol=1e-5)


def test_no_vae_is_refused_with_what_to_connect(model):
    handle = ControlNetHandle(random_controlnet(1)).copy().set_cond_hint(control_image().movedim(-1, 1), 1.0)
    with pytest.raises(ValueError, match="connect a VAE"):
        run(model, [[entry(P, 1)[0], {**entry(P, 1)[1], "control": handle}]])


def test_handle_answers_core_samplers_like_controlbase():
    a, b = random_controlnet(1, seed=1), random_controlnet(1, seed=2)
    first = ControlNetHandle(a).copy().set_cond_hint(control_image().movedim(-1, 1), 0.5, (0.0, 0.5), vae=FakeVAE())
    second = ControlNetHandle(b).copy().set_cond_hint(control_image().movedim(-1, 1), 2.0, (0.5, 1.0), vae=FakeVAE())
    second.set_previous_controlnet(first)
    second.pre_run(None, percent_to_sigma)
    x = torch.zeros(2, 16, 8, 8)
    early = second.get_control(x, torch.tensor([0.95, 0.95]), None, 2)
    late = second.get_control(x, torch.tensor([0.05, 0.05]), None, 2)
    assert [c.net for c in early] == [a] and early[0].strength == 0.5
    assert [c.net for c in late] == [b] and late[0].strength == 2.0
    assert early[0].hint.shape == (1, 16, 8, 8)
    assert second.get_models() == [] and second.get_extra_hooks() == []
    second.cleanup()
    assert second.timestep_range is None and first.timestep_range is None


def test_the_loaders_vae_encodes_when_the_apply_node_has_none(model):
    net = random_controlnet(2, seed=37)
    base = entry(P, 7)
    loaded = ControlNetHandle(net, "cn", FakeVAE())
    no_vae = loaded.copy().set_cond_hint(control_image().movedim(-1, 1), 0.8, (0.0, 1.0), vae=None)
    ours = FLUX.from_raw(run(model, [[base[0], {**base[1], "control": no_vae}]])["samples"])
    expected = core_reference(model, base[0], base[1]["pooled_output"], [(net, hint(), 0.8, 0.0, 1.0)])
    assert torch.allclose(ours, expected, atol=1e-4)
