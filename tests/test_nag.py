"""Normalized Attention Guidance (``steering/nag.py``) on a tiny random Next-DiT.

References written here: the paper's formula step by step on one token at a time (plain Python
floats), and a second forward that computes Z− the way the paper describes it for a joint-attention
model: the negative prompt as a second sample of the batch whose image tokens are overwritten, at
every joint layer's input, with the guided sample's image tokens (so its image queries are the
guided sample's), and the guided sample's image rows of the attention output replaced by the
formula. The entry carries the negative stream beside the sample instead, with shifted RoPE
positions, so the two agree up to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import random_dit, random_inputs, tiny_params
from nextdit_nodes.dit.offload import offload_blocks, remove_offload
from nextdit_nodes.dit.step_cache import step_cache
from nextdit_nodes.lora.apply import apply_lora
from nextdit_nodes.lora.read import LowRank, ParsedLora
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import sample
from nextdit_nodes.steering.nag import (ACTIVE_ENTRY, SETTINGS_ENTRY, NAGGuidance, NAGSettings, attached,
                                        with_nag)
from nextdit_nodes.steering.nag_math import nag_combine
from nextdit_nodes.text.conditioning import PromptBatch

SCALE, TAU, ALPHA = 3.0, 1.6, 0.6


@pytest.fixture(scope="module")
def model():
    return random_dit(tiny_params(), seed=11)   # 2 joint layers


def paper_formula(z_pos: list[float], z_neg: list[float], s: float, tau: float, alpha: float) -> list[float]:
    """Chen et al. 2025, eq. 5-7, for one token: extrapolate, clamp the L1 ratio at tau, blend."""
    tilde = [p + (s - 1) * (p - n) for p, n in zip(z_pos, z_neg)]
    r = sum(abs(x) for x in tilde) / sum(abs(x) for x in z_pos)
    if r > tau:
        tilde = [x * tau / r for x in tilde]
    return [alpha * x + (1 - alpha) * p for x, p in zip(tilde, z_pos)]


def test_combination_is_the_papers_formula_token_by_token():
    g = torch.Generator().manual_seed(0)
    z_pos = torch.randn(2, 7, 24, generator=g, dtype=torch.float64)
    z_neg = z_pos + torch.randn(2, 7, 24, generator=g, dtype=torch.float64) * torch.rand(2, 7, 1, generator=g,
                                                                                           dtype=torch.float64)
    out = nag_combine(z_pos, z_neg, SCALE, TAU, ALPHA)
    clamped = 0
    for b in range(2):
        for i in range(7):
            ref = paper_formula(z_pos[b, i].tolist(), z_neg[b, i].tolist(), SCALE, TAU, ALPHA)
            assert out[b, i].tolist() == pytest.approx(ref, rel=1e-5, abs=1e-6)
            tilde = z_pos[b, i] * SCALE - z_neg[b, i] * (SCALE - 1)
            clamped += bool(tilde.abs().sum() > TAU * z_pos[b, i].abs().sum())
    assert 0 < clamped < 14   # both branches of the clamp are exercised
    # Scale 1 leaves Z+ (up to the blend's rounding); alpha 0 returns Z+ exactly.
    assert torch.allclose(nag_combine(z_pos, z_neg, 1.0, TAU, ALPHA), z_pos, atol=1e-12)
    assert torch.equal(nag_combine(z_pos, z_neg, SCALE, TAU, 0.0), z_pos)


def caption(params, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, params.cap_dim, generator=g)


class ReferenceNAG:
    """Z− as the paper describes it: sample 1 of a two-sample batch holds the negative prompt, its
    image tokens overwritten by sample 0's at every joint layer's input; sample 0's image rows of
    each attention output replaced by the formula on (sample 0, sample 1)."""

    def __init__(self, n_img):
        self.n_img = n_img

    def _images(self, ctx):
        index = ctx.layout.img_index
        return index[:self.n_img], index[self.n_img:]

    def layer_input(self, index, joint, ctx):
        img0, img1 = self._images(ctx)
        joint = joint.clone()
        joint[img1] = joint[img0]
        return joint

    def attention(self, index, q, k, v, segments, ctx, run):
        z = run(q, k, v, segments)
        img0, img1 = self._images(ctx)
        z = z.clone()
        z[img0] = nag_combine(z[img0], z[img1], SCALE, TAU, ALPHA)
        return z


def nag_entry(model, neg_feats, settings=None):
    settings = settings or NAGSettings(None, SCALE, TAU, ALPHA)
    negative = PromptBatch(neg_feats, torch.ones(neg_feats.shape[:2], dtype=torch.bool), None)
    return NAGGuidance(model, negative, settings, (0.0, 1.0))


@pytest.mark.parametrize("pos_len,neg_len", [(6, 3), (3, 6)])
def test_one_forward_matches_the_negative_prompt_as_a_second_sample(model, pos_len, neg_len):
    p = model.params
    inputs = random_inputs(p, [pos_len], seed=1)
    neg = caption(p, neg_len, seed=2)
    entry = nag_entry(model, neg)
    with torch.no_grad(), attached(model, entry):
        entry.prepare(0.5, 1)
        guided = model(**inputs)
        entry.prepare(0.5, 0)          # nothing guided: the plain forward bit for bit
        unguided = model(**inputs)
    with torch.no_grad():
        plain = model(**inputs)
        length = max(pos_len, neg_len)
        feats = torch.zeros(2, length, p.cap_dim)
        feats[0, :pos_len], feats[1, :neg_len] = inputs["cap_feats"][0, :pos_len], neg[0]
        mask = torch.arange(length)[None] < torch.tensor([pos_len, neg_len])[:, None]
        model.seam.attach("reference", ReferenceNAG(n_img=16))
        try:
            ref = model(inputs["x"].repeat(2, 1, 1, 1), inputs["t"].repeat(2), feats, mask,
                        inputs["clip_pooled"].repeat(2, 1))
        finally:
            model.seam.detach("reference")
    assert torch.equal(unguided, plain)
    assert (guided - plain).abs().max() > 1e-2                        # NAG changes the velocity
    assert torch.allclose(guided, ref[:1], atol=1e-4, rtol=1e-4)


def test_only_the_conditional_samples_are_guided(model):
    p = model.params
    inputs = random_inputs(p, [5, 4], seed=3)   # sample 0: conditional, sample 1: CFG's negative
    neg = caption(p, 3, seed=4).repeat(1, 1, 1)
    entry = nag_entry(model, neg)
    with torch.no_grad():
        with attached(model, entry):
            entry.prepare(0.3, 1)
            both = model(**inputs)
        alone = {k: v[:1] for k, v in inputs.items()}
        with attached(model, nag_entry(model, neg)) as single:
            single.prepare(0.3, 1)
            first = model(**alone)
        second = model(**{k: v[1:] for k, v in inputs.items()})
    assert torch.allclose(both[:1], first, atol=1e-5)
    assert torch.allclose(both[1:], second, atol=1e-5)
    # Core's batches name the conditional samples by index (here: the second of the two).
    swapped = {k: v.flip(0) for k, v in inputs.items()}
    with torch.no_grad(), attached(model, nag_entry(model, neg.repeat(2, 1, 1))) as by_index:
        by_index.prepare(0.3, [1])
        flipped = model(**swapped)
    assert torch.allclose(flipped.flip(0), both, atol=1e-5)


def run_sampler(model, cfg=1.0, steps=4, **kwargs):
    p = model.params
    g = torch.Generator().manual_seed(9)
    positive = [[torch.randn(1, 5, p.cap_dim, generator=g), {"pooled_output": torch.randn(1, p.clip_dim, generator=g)}]]
    negative = [[torch.randn(1, 3, p.cap_dim, generator=g), {"pooled_output": torch.randn(1, p.clip_dim, generator=g)}]]
    settings, rest = SamplerSettings.take(dict(steps=steps, solver="euler", cfg=cfg, cfg_trunc=1.0, **kwargs))
    return sample(model, positive, negative if cfg != 1 else None, settings, width=32, height=32, seed=5,
                  **rest)["samples"]


def nag_conditioning(p, length=4, seed=21):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, p.cap_dim, generator=g), {"pooled_output": torch.randn(1, p.clip_dim, generator=g)}]]


def test_node_copy_carries_the_settings_and_scale_one_is_no_nag(model):
    p = model.params
    plain = run_sampler(model)
    off = with_nag(model, NAGSettings(nag_conditioning(p), scale=1.0))
    outside = with_nag(model, NAGSettings(nag_conditioning(p), scale=4.0, start_percent=1.0, end_percent=1.0))
    on = with_nag(model, NAGSettings(nag_conditioning(p), scale=4.0))
    assert SETTINGS_ENTRY not in model.seam and SETTINGS_ENTRY in on.seam   # the input is not modified
    assert torch.equal(run_sampler(off), plain)
    guided = run_sampler(on)
    assert (guided - plain).abs().max() > 1e-3
    assert ACTIVE_ENTRY not in on.seam                                       # detached after sampling
    # The window: active only at t = 1 (the end percent), which the Euler grid never evaluates.
    assert torch.equal(run_sampler(outside), plain)
    assert torch.equal(run_sampler(model), plain)                             # the input still plain


def test_with_cfg_step_cache_lora_and_block_streaming(model):
    p = model.params
    on = with_nag(model, NAGSettings(nag_conditioning(p), scale=4.0, tau=2.0, alpha=0.5))
    guided = run_sampler(on, cfg=3.0)
    assert (guided - run_sampler(model, cfg=3.0)).abs().max() > 1e-3
    assert torch.equal(run_sampler(on, cfg=3.0, step_cache=0.0), guided)
    with step_cache(on, 0.0):                     # the cache's code path, nothing skipped
        assert torch.equal(run_sampler(on, cfg=3.0), guided)
    assert run_sampler(on, cfg=3.0, step_cache=0.5).isfinite().all()
    offload_blocks(on, "cpu")                     # CPU stands in for the device: copies are still made
    try:
        assert torch.equal(run_sampler(on, cfg=3.0), guided)
    finally:
        remove_offload(on)
    g = torch.Generator().manual_seed(3)
    qkv = model.layers[0].attention.qkv
    deltas = {"layers.0.attention.qkv": [LowRank(torch.randn(2, qkv.in_features, generator=g),
                                                 torch.randn(qkv.out_features, 2, generator=g), 1.0)]}
    lora = ParsedLora(Path("x.safetensors"), "test", "test", deltas, {k: "applied" for k in deltas})
    lora_nag = with_nag(apply_lora(model, lora, 0.5), NAGSettings(nag_conditioning(p), scale=4.0, tau=2.0,
                                                                  alpha=0.5))
    nag_lora = apply_lora(on, lora, 0.5)          # either order: the same model
    assert torch.equal(run_sampler(lora_nag, cfg=3.0), run_sampler(nag_lora, cfg=3.0))
    assert (run_sampler(lora_nag, cfg=3.0) - guided).abs().max() > 1e-4


def test_bad_settings_are_refused_with_the_reason(model):
    with pytest.raises(ValueError, match="scale must be at least 1"):
        NAGSettings(None, scale=0.5).check()
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        NAGSettings(None, alpha=1.5).check()
    with pytest.raises(ValueError, match="start_percent <= end_percent"):
        NAGSettings(None, start_percent=0.8, end_percent=0.2).check()
    two = nag_conditioning(model.params) + nag_conditioning(model.params, seed=3)
    with pytest.raises(ValueError, match="NAG takes one negative prompt"):
        run_sampler(with_nag(model, NAGSettings(two, scale=3.0)))
