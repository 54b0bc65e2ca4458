"""The step cache of NextDiT Sampler (``dit/step_cache.py``) on a tiny random model.

References written here: the change measure recomputed from the first layer's attention input
recorded by a separate hook, and the reused evaluation rebuilt by replacing the second (last)
joint layer with "add the residual it produced at the last full evaluation".
"""

from __future__ import annotations

import pytest
import torch

from factories import random_dit, tiny_params
from nextdit_nodes.dit.step_cache import StepCache, step_cache
from nextdit_nodes.nodes import host
from nextdit_nodes.nodes.sampling import NextDiTSampler
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import SamplingReport, sample


@pytest.fixture(scope="module")
def model():
    return random_dit(tiny_params(), seed=5)   # 2 joint layers


def prompt(params, seed, length=5):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, params.cap_dim, generator=g),
             {"pooled_output": torch.randn(1, params.clip_dim, generator=g)}]]


def run(model, threshold=0.0, steps=6, solver="euler", cfg=4.0, cfg_trunc=1.0, **kwargs):
    p = model.params
    report = SamplingReport()
    settings, rest = SamplerSettings.take(dict(steps=steps, solver=solver, cfg=cfg, cfg_trunc=cfg_trunc,
                                               step_cache=threshold, **kwargs))
    out = sample(model, prompt(p, 1), prompt(p, 2, length=3), settings, width=32, height=32, seed=7, report=report,
                 **rest)
    return out["samples"], report


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("solver,cfg", [("euler", 4.0), ("midpoint", 1.0)])
def test_threshold_zero_is_the_uncached_sampler_bit_for_bit(model, solver, cfg):
    plain, report = run(model, solver=solver, cfg=cfg)
    assert report.cache is None
    assert torch.equal(run(model, 0.0, solver=solver, cfg=cfg)[0], plain)   # the node's default: off
    # The cache attached at threshold 0: every evaluation goes through its code path, none is skipped.
    with step_cache(model, 0.0) as cache:
        cached, _ = run(model, solver=solver, cfg=cfg)
    assert torch.equal(cached, plain)
    assert (cache.evaluations, cache.skipped) == (6 * (2 if solver == "midpoint" else 1), 0)
    assert "step_cache" not in model.attachments and not model.layers[0].attention._forward_pre_hooks


def test_a_large_threshold_skips_what_it_reports(model):
    second_layer, handle = count_calls(model.layers[1])
    try:
        _, report = run(model, 1e9, steps=8)
    finally:
        handle.remove()
    # One decision per packed CFG forward: 8 evaluations, only the first computes the layers.
    assert (report.cache.evaluations, report.cache.skipped) == (8, 7)
    assert len(second_layer) == report.cache.evaluations - report.cache.skipped == 1
    assert "skipped 7 of 8 evaluations" in report.describe()


def test_a_new_token_layout_forces_a_full_evaluation(model):
    # CFG only while t < 0.5: the packed batch drops its unconditional half halfway, so the
    # cached residual (of a 2-sample layout) cannot be reused for the 1-sample one.
    _, report = run(model, 1e9, steps=8, cfg_trunc=0.5)
    assert (report.cache.evaluations, report.cache.skipped) == (8, 6)


def test_skip_decisions_follow_the_relative_l1_change_since_the_last_full_evaluation(model):
    """Every decision of a run with skips and full evaluations, predicted by an observer that sees
    the first layer's attention input and whether the second layer ran afterwards."""
    inputs, full = [], []
    observe = model.layers[0].attention.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0].clone()) or full.append(False))   # returns None
    ran = model.layers[1].register_forward_hook(lambda *args: full.__setitem__(-1, True))
    threshold = 0.06     # between the smallest and largest change of one step on this model
    try:
        _, report = run(model, threshold, steps=12)
    finally:
        observe.remove()
        ran.remove()
    predicted, reference = [], None
    for m in inputs:
        change = None if reference is None else ((m - reference).abs().mean() / reference.abs().mean()).item()
        skip = change is not None and change < threshold
        predicted.append(not skip)
        if not skip:
            reference = m
    assert full == predicted
    assert report.cache.skipped == full.count(False) and 2 <= full.count(False) <= 10 and full.count(True) >= 2


def test_a_reused_evaluation_adds_the_last_residual_of_the_other_layers(model):
    """Two evaluations at different times: the second, reused, equals the model with its last
    layer replaced by 'add the residual that layer produced in the first evaluation'."""
    p = model.params
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g)
    feats, extras = prompt(p, 1)[0]
    mask = torch.ones(1, feats.shape[1], dtype=torch.bool)
    inputs = lambda x, t: (x, torch.tensor([t]), feats, mask, extras["pooled_output"])  # noqa: E731
    seen = {}
    handle = model.layers[1].register_forward_hook(lambda module, args, out: seen.update(residual=out - args[0]))
    try:
        with torch.no_grad(), step_cache(model, 1e9) as cache:
            model(*inputs(x1, 0.3))
            reused = model(*inputs(x2, 0.35))
    finally:
        handle.remove()
    assert (cache.evaluations, cache.skipped) == (2, 1)

    class AddResidual(torch.nn.Module):
        def forward(self, x, *args):
            return x + seen["residual"]

    last = model.layers[1]
    model.layers[1] = AddResidual()
    try:
        with torch.no_grad():
            expected = model(*inputs(x2, 0.35))
    finally:
        model.layers[1] = last
    assert torch.allclose(reused, expected, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(reused, model(*inputs(x2, 0.35)), atol=1e-3)   # it was not computed


def test_node_reports_the_skipped_evaluations_in_its_text_and_progress_line(model):
    p = model.params
    notes = []
    previous = host.set_progress_hook(lambda done, total, preview, note: notes.append(note))
    try:
        result = NextDiTSampler().sample(model, prompt(p, 1), 32, 32, 1, 7, 6, "euler", 6.0, 4.0, 0.0, 1.0, 0.0,
                                         negative=prompt(p, 2), step_cache=1e9)
    finally:
        host.set_progress_hook(previous)
    (text,) = result["ui"]["text"]
    assert "skipped 5 of 6 evaluations" in text
    # Step i (from 1) has made i evaluations, all but the first skipped (on a CPU the line is live);
    # the last step carries the node's text (inside ComfyUI shown on the node).
    assert notes == [f"cache skipped {i - 1}/{i}" for i in range(1, 6)] + [text]
    plain = NextDiTSampler().sample(model, prompt(p, 1), 32, 32, 1, 7, 6, "euler", 6.0, 4.0, 0.0, 1.0, 0.0,
                                    negative=prompt(p, 2))
    assert "step cache" not in plain["ui"]["text"][0]


def test_bad_thresholds_and_a_second_cache_are_refused(model):
    with pytest.raises(ValueError, match="step_cache"):
        run(model, -0.1)
    with pytest.raises(ValueError, match="threshold"):
        StepCache(float("nan"))
    with step_cache(model, 0.1):
        with pytest.raises(RuntimeError, match="already carries a step cache"):
            run(model, 0.2)
