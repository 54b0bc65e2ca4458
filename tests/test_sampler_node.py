"""NextDiTSampler node: its documented inputs, validation, progress with previews, interrupts."""

from __future__ import annotations

import inspect

import pytest
import torch
from factories import random_dit, tiny_params
from PIL import Image

from nextdit_nodes import NODE_CLASS_MAPPINGS
from nextdit_nodes.nodes import host
from nextdit_nodes.nodes.sampling import NextDiTSampler
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import sample
from nextdit_nodes.sampling.preview import latent_to_rgb


@pytest.fixture(scope="module")
def model():
    return random_dit(tiny_params(), seed=5)


def _conditioning(params, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, params.cap_dim, generator=g),
             {"pooled_output": torch.randn(1, params.clip_dim, generator=g),
              "attention_mask": torch.ones(1, length)}]]


def _kwargs(model, **over):
    return {"model": model, "positive": _conditioning(model.params, 5, 1), "width": 64, "height": 48,
            "batch_size": 1, "seed": 42, "steps": 3, "solver": "midpoint", "shift": 6.0, "cfg": 4.0,
            "renorm_cfg": 0.0, "cfg_trunc": 1.0, "guidance": 0.0,
            "negative": _conditioning(model.params, 2, 2), **over}


def test_inputs_follow_the_design_table_and_all_have_tooltips():
    spec = NextDiTSampler.INPUT_TYPES()
    assert list(spec["required"]) == ["model", "positive", "width", "height", "batch_size", "seed", "steps",
                                      "solver", "shift", "cfg", "renorm_cfg", "cfg_trunc", "guidance"]
    # New optional inputs go last, so saved workflows' widget values still line up.
    assert list(spec["optional"]) == ["negative", "latent", "denoise", "step_cache"]
    for name, (kind, options) in {**spec["required"], **spec["optional"]}.items():
        assert options.get("tooltip"), name
    required = spec["required"]
    assert required["solver"][0] == ["euler", "midpoint", "heun", "dpmpp_2m"]
    # Official demo defaults: midpoint, shift 6, cfg 5, trunc 0.25, renorm 0; steps 0: the model's own
    # settings, or for a model that records none the official 18 grid points = 17 steps (node_defaults).
    assert {k: required[k][1]["default"] for k in ("solver", "steps", "shift", "cfg", "cfg_trunc", "renorm_cfg")} \
        == {"solver": "midpoint", "steps": 0, "shift": 6.0, "cfg": 5.0, "cfg_trunc": 0.25, "renorm_cfg": 0.0}
    assert "steps + 1" in required["steps"][1]["tooltip"]
    assert required["seed"][1]["control_after_generate"] is True
    assert NextDiTSampler.RETURN_TYPES == ("LATENT",) and NextDiTSampler.__name__.startswith("NextDiT")
    assert NODE_CLASS_MAPPINGS["NextDiTSampler"] is NextDiTSampler
    assert NextDiTSampler.CATEGORY.startswith("NextDiT/") and NextDiTSampler.DESCRIPTION


@pytest.mark.parametrize("width,height,bad", [(1000, 1024, "width 1000"), (1024, 8192, "height 8192")])
def test_sides_that_are_not_multiples_of_16_are_refused_before_sampling(model, width, height, bad):
    # VALIDATE_INPUTS names neither side: naming both there would pin the message on both in ComfyUI.
    assert not {"width", "height"} & set(inspect.signature(NextDiTSampler.VALIDATE_INPUTS).parameters)
    side = NextDiTSampler.INPUT_TYPES()["required"]["width"][1]
    assert (side["min"], side["step"]) == (0, 16)      # the editor rounds typed sides to 16; 0: the model's size
    updates = []
    previous = host.set_progress_hook(lambda done, total, preview, note: updates.append(done))
    try:
        with pytest.raises(ValueError, match=f"{bad} must be a multiple of 16"):
            NextDiTSampler().sample(**_kwargs(model, width=width, height=height))
    finally:
        host.set_progress_hook(previous)
    assert not updates      # refused before the first step
    # steps and every other number are checked per input by the host's range checks
    assert NextDiTSampler.INPUT_TYPES()["required"]["steps"][1]["min"] == 0   # 0: the model's own settings


def test_node_output_equals_sample_and_reports_progress_with_previews(model):
    updates = []
    previous = host.set_progress_hook(lambda done, total, preview, note: updates.append((done, total, preview)))
    try:
        (out,) = NextDiTSampler().sample(**_kwargs(model), unique_id="7")["result"]
    finally:
        host.set_progress_hook(previous)
    args = _kwargs(model)
    args.pop("guidance")
    settings, rest = SamplerSettings.take(args)
    expected = sample(settings=settings, **rest)
    assert torch.equal(out["samples"], expected["samples"])
    assert [(d, t) for d, t, _ in updates] == [(1, 3), (2, 3), (3, 3)]
    for _, _, (fmt, image, size) in updates:
        assert fmt == "JPEG" and size == 512 and isinstance(image, Image.Image)
        assert image.size == (64 // 8, 48 // 8) and image.mode == "RGB"


def test_cancel_lands_within_one_joint_layer(model):
    """Cancel pressed while joint layer 0 of the first evaluation runs: layer 1 never runs again, the
    run stops with the host's Interrupted and the next run is unaffected."""
    ran, pressed = [], []

    def press_cancel_in_layer_0(module, args, out):
        if not pressed:
            pressed.append(1)
            host.request_interrupt()
        ran.append(0)

    handles = [model.layers[0].register_forward_hook(press_cancel_in_layer_0),
               model.layers[1].register_forward_hook(lambda *_: ran.append(1))]
    try:
        with pytest.raises(host.Interrupted):
            NextDiTSampler().sample(**_kwargs(model, steps=10))
        assert ran == [0]
        ran.clear()
        (out,) = NextDiTSampler().sample(**_kwargs(model, steps=2))["result"]
        assert torch.isfinite(out["samples"]).all() and ran.count(1) == ran.count(0) > 0
    finally:
        for handle in handles:
            handle.remove()
        host.request_interrupt(False)


def test_missing_negative_with_cfg_is_a_clear_error_before_the_first_step(model):
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="needs a negative conditioning"):
            NextDiTSampler().sample(**_kwargs(model, negative=None, cfg=5.0))
    finally:
        handle.remove()
    assert not calls
    (out,) = NextDiTSampler().sample(**_kwargs(model, negative=None, cfg=1.0))["result"]  # cfg 1: not needed
    assert torch.isfinite(out["samples"]).all()


def test_latent_preview_projection_orientation():
    # Channel k set to 1 everywhere gives factor row k + bias, mapped from [-1, 1] to [0, 255]
    # (ComfyUI Flux latent_rgb_factors: channel 4 row is (0.0859, 0.0721, 0.0329), bias (-0.0329, -0.0718, -0.0851)).
    latent = torch.zeros(16, 2, 3)
    latent[4] = 1.0
    expected = [int((v + 1.0) * 127.5) for v in (0.0859 - 0.0329, 0.0721 - 0.0718, 0.0329 - 0.0851)]
    rgb = latent_to_rgb(latent)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == torch.uint8
    assert rgb[1, 2].tolist() == expected


def test_zeros_stand_for_the_models_recorded_size_and_settings():
    from nextdit_nodes.sampler_settings import SamplerSettings, node_defaults

    def defaults(own, width, height, steps, solver, shift, cfg, cfg_trunc, guidance, has_negative):
        typed = SamplerSettings(steps=steps, solver=solver, shift=shift, cfg=cfg, cfg_trunc=cfg_trunc,
                                guidance=guidance)
        settings, width, height, notes = node_defaults(own, typed, width, height, has_negative)
        return dict(width=width, height=height, steps=settings.steps, solver=settings.solver, shift=settings.shift,
                    cfg=settings.cfg, cfg_trunc=settings.cfg_trunc, guidance=settings.guidance), notes

    teacher = SamplerSettings(25, "euler", 6.0, cfg=4.0, cfg_trunc=1.0, resolution=64)
    values, notes = defaults(teacher, 0, 0, 0, "midpoint", 3.0, 5.0, 0.25, 0.0, has_negative=True)
    assert values == dict(width=64, height=64, steps=25, solver="euler", shift=6.0, cfg=4.0, cfg_trunc=1.0,
                          guidance=0.0)
    assert notes == ["64×64 (the model's training size)", "the model's own settings"]
    # Typed values stay; a model that records nothing gets 1024² and the official 17 midpoint steps at cfg 5.
    values, _ = defaults(teacher, 128, 96, 7, "heun", 3.0, 2.0, 0.5, 0.0, has_negative=True)
    assert values == dict(width=128, height=96, steps=7, solver="heun", shift=3.0, cfg=2.0, cfg_trunc=0.5,
                          guidance=0.0)
    values, notes = defaults(None, 0, 0, 0, "euler", 3.0, 2.0, 0.5, 0.0, has_negative=True)
    assert (values["width"], values["height"], values["steps"], values["solver"], values["shift"],
            values["cfg"], values["cfg_trunc"]) == (1024, 1024, 17, "midpoint", 6.0, 5.0, 0.5)
    assert "records none" in notes[1]
    # CFG the user did not type falls back to 1 without a negative, and says so.
    values, notes = defaults(teacher, 64, 64, 0, "euler", 6.0, 5.0, 1.0, 0.0, has_negative=False)
    assert values["cfg"] == 1.0 and notes[-1] == "cfg 1 instead of 4: no negative is connected"


def test_validation_refuses_typed_cfg_without_a_negative_and_checks_link_types():
    validate = NextDiTSampler.VALIDATE_INPUTS
    linked = {"model": "NEXTDIT_MODEL", "positive": "CONDITIONING"}
    assert "needs a negative" in validate(steps=10, cfg=5.0, input_types=linked)
    assert validate(steps=10, cfg=5.0, input_types={**linked, "negative": "CONDITIONING"}) is True
    assert validate(steps=10, cfg=1.0, input_types=linked) is True
    assert validate(steps=0, cfg=5.0, input_types=linked) is True       # decided from the model at run time
    assert validate(steps=None, cfg=None, input_types=linked) is True    # linked values: checked when run
    assert "expects NEXTDIT_MODEL but is linked to a MODEL" in validate(steps=10, cfg=1.0,
                                                                          input_types={**linked, "model": "MODEL"})
    assert "1001 is bigger than the maximum 1000" in validate(steps=1001, cfg=1.0, input_types=linked)
    assert "finite" in validate(steps=10, cfg=float("nan"), input_types=linked)      # ComfyUI's float() accepts NaN


def test_an_empty_latent_of_another_channel_count_is_sampled_at_its_size(model):
    # Core's EmptyLatentImage gives 4 channels; core's KSampler widens an all-zero latent to the
    # model's channels, so it only gives the size (here 64×48 pixels).
    empty = {"samples": torch.zeros(1, 4, 6, 8)}
    (out,) = NextDiTSampler().sample(**_kwargs(model, width=0, height=0, latent=empty))["result"]
    (reference,) = NextDiTSampler().sample(**_kwargs(model))["result"]
    assert out["samples"].shape == (1, 16, 6, 8)
    assert torch.equal(out["samples"], reference["samples"])
