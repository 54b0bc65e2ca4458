"""Prompt weights: the syntax parser (``prompting/weights.py``), the token mapping
(``text/weights.py``) and the attention bias (``steering/weights.py``).

References: hand-written expected texts and weights; a word-level fake tokenizer whose token
boundaries are known; and an attention written out by hand (softmax of the scaled scores with the
caption columns' probabilities multiplied by their weights for the image rows, renormalised).
"""

from __future__ import annotations

import re

import pytest
import torch
from factories import random_dit, random_inputs, tiny_params
from nextdit_nodes.prompting import PromptError, parse_prompt
from nextdit_nodes.prompting.weights import parse_weights
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import sample
from nextdit_nodes.steering.weights import PromptWeights
from nextdit_nodes.text.conditioning import PromptBatch
from nextdit_nodes.text.weights import token_weights


def spans(text):
    return [(parse_weights(text).text[a:b], round(w, 6)) for a, b, w in parse_weights(text).spans]


def test_weights_nest_multiply_and_explicit_values_replace_the_bracket():
    assert parse_weights("a (red:1.3) b").text == "a red b"
    assert spans("a (red:1.3) b") == [("red", 1.3)]
    assert spans("(x) ((y)) [z] [[w]]") == [("x", 1.1), ("y", 1.21), ("z", round(1 / 1.1, 6)),
                                            ("w", round(1 / 1.21, 6))]
    # b: 2 inside 0.5 is 1 (no span); c: 0.5 / 1.1.
    assert spans("(a (b:2) [c]:0.5)") == [("a ", 0.5), (" ", 0.5), ("c", round(0.5 / 1.1, 6))]
    assert spans("((a):1.5)") == [("a", 1.65)]
    assert spans("( spaced : .5 )") == [(" spaced ", 0.5)]
    assert parse_weights("(t:1)").spans == () and parse_weights("(t:1)").text == "t"
    assert spans("[(t)]") == []                                      # 1.1 / 1.1 is exactly 1


def test_escapes_and_danbooru_brackets_stay_text():
    assert parse_weights(r"\(not\) \[weighted\] a\\b").text == r"(not) [weighted] a\b"
    assert parse_weights(r"\(not\)").spans == ()
    weighted = parse_weights("hatsune_miku_(vocaloid), (smile:0.5), cat(animal)")
    assert weighted.text == "hatsune_miku_(vocaloid), smile, cat(animal)"
    assert [(weighted.text[a:b], w) for a, b, w in weighted.spans] == [("smile", 0.5)]
    assert spans("(hatsune_miku_(vocaloid):1.2)") == [("hatsune_miku_(vocaloid)", 1.2)]
    assert parse_weights("no brackets at all").text == "no brackets at all"


@pytest.mark.parametrize("text,column,what", [
    ("a (open", 3, "never closed"), ("close) b", 6, "never opened"), ("x\n  [a)", 5, "closes the '['"),
    ("(a:-1)", 1, "negative"), ("_(x", 2, "never closed")])
def test_unbalanced_brackets_name_the_place(text, column, what):
    with pytest.raises(PromptError, match=re.escape(what)) as info:
        parse_weights(text)
    assert info.value.column == column


def test_a_weight_around_an_xml_block_leaves_the_xml_readable():
    block = "<character_1>\n<n>circle</n>\n<appearance>red</appearance>\n</character_1>"
    other = "<character_2>\n<n>square</n>\n</character_2>"
    plain = f"{block}\n\n{other}"
    weighted = parse_weights(f"({block}:0)\n\n<character_2>\n<n>(square:1.4)</n>\n</character_2>")
    assert weighted.text == plain
    assert parse_prompt(weighted.text).characters == parse_prompt(plain).characters
    (a, b, w0), (c, d, w1) = weighted.spans
    assert (weighted.text[a:b], w0) == (block, 0.0) and (weighted.text[c:d], w1) == ("square", 1.4)
    assert weighted.without(1e-6) == f"\n\n{other}"


def word_tokenizer(text):
    """BOS + one token per whitespace-separated word."""
    return [0] + [hash(word) % 1000 + 1 for word in text.split()]


def test_token_weights_follow_the_words():
    system = "Sys prompt: "
    weighted = parse_weights("a (red big:0.5) circle [here]")
    text = system + weighted.text
    weights = token_weights(word_tokenizer, text, weighted.spans, offset=len(system))
    # tokens: BOS Sys prompt: a red big circle here
    assert weights == [1, 1, 1, 1, 0.5, 0.5, 1, pytest.approx(1 / 1.1)]
    assert token_weights(word_tokenizer, text, parse_weights("plain").spans) is None
    first = parse_weights("(first:0) second")
    assert token_weights(word_tokenizer, first.text, first.spans) == [1, 0, 1]
    assert token_weights(word_tokenizer, text, weighted.spans, offset=len(system), max_tokens=5) == [1, 1, 1, 1, 0.5]


class ManualWeightedAttention:
    """The weighted attention written out: softmax, the image rows' caption columns times w, renormalised."""

    def __init__(self, weights):
        self.weights = weights

    def attention(self, index, q, k, v, segments, ctx, run):
        outs, start = [], 0
        for row, (n_cap, total) in enumerate(zip(ctx.layout.captions.lengths, segments.lengths)):
            qs, ks, vs = (x[start:start + total].double() for x in (q, k, v))
            rep = qs.shape[1] // ks.shape[1]
            ks, vs = ks.repeat_interleave(rep, 1), vs.repeat_interleave(rep, 1)
            probs = torch.softmax(torch.einsum("qhd,khd->hqk", qs, ks) / qs.shape[-1] ** 0.5, dim=-1)
            scale = torch.ones(total, total, dtype=torch.float64)
            scale[n_cap:, :n_cap] = self.weights[row, :n_cap].double()
            probs = probs * scale
            probs = probs / probs.sum(-1, keepdim=True)
            outs.append(torch.einsum("hqk,khd->qhd", probs, vs).flatten(1))
            start += total
        return torch.cat(outs).to(q.dtype)


def test_the_bias_is_the_weighted_softmax_and_weight_one_is_the_plain_forward():
    model = random_dit(tiny_params(), seed=4)
    inputs = random_inputs(model.params, [5, 4], seed=2)
    weights = torch.ones(2, 5)
    weights[0, 1], weights[0, 3], weights[1, 2] = 0.0, 2.5, 0.3
    entry = PromptWeights()
    batch = PromptBatch(inputs["cap_feats"], inputs["cap_mask"], inputs["clip_pooled"], weights)
    with torch.no_grad():
        plain = model(**inputs)
        model.seam.attach("weights", entry)
        try:
            entry.prepare(0.5, 2, batch)
            weighted = model(**inputs)
            entry.prepare(0.5, 2, PromptBatch(batch.feats, batch.mask, None, torch.ones(2, 5)))
            ones = model(**inputs)
        finally:
            model.seam.detach("weights")
        model.seam.attach("manual", ManualWeightedAttention(weights))
        try:
            reference = model(**inputs)
        finally:
            model.seam.detach("manual")
    assert torch.equal(ones, plain)
    assert (weighted - plain).abs().max() > 1e-3
    assert torch.allclose(weighted, reference, atol=1e-5)


def test_sampling_with_all_weights_one_is_bit_identical():
    model = random_dit(tiny_params(), seed=6)
    p = model.params
    g = torch.Generator().manual_seed(1)
    feats, pooled = torch.randn(1, 6, p.cap_dim, generator=g), torch.randn(1, p.clip_dim, generator=g)
    settings = SamplerSettings(steps=3, solver="euler", cfg=1.0)

    def run(extras):
        return sample(model, [[feats, {"pooled_output": pooled, **extras}]], None, settings, width=32, height=32,
                      seed=3)["samples"]

    plain = run({})
    assert torch.equal(run({"token_weights": torch.ones(1, 6)}), plain)
    zero = torch.ones(1, 6)
    zero[0, 2:4] = 0
    assert (run({"token_weights": zero}) - plain).abs().max() > 1e-4
