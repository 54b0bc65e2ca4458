"""The forward's seam (``dit/seam.py``): the registry, and each named point against a reference.

References: PyTorch's own module hooks on the submodule where a point sits (a forward pre-hook on
the next module, or a forward hook replacing a module's output), which change the computation
through a mechanism independent of the seam; and the plain forward for entries that change nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import random_dit, random_inputs, tiny_params
from nextdit_nodes.lora.apply import apply_lora, merged_state_dict
from nextdit_nodes.lora.read import LowRank, ParsedLora


@pytest.fixture()
def model():
    return random_dit(tiny_params(), seed=3)   # 2 joint layers


def forward(model, seed=0):
    inputs = random_inputs(model.params, [5, 3], seed=seed)
    with torch.no_grad():
        return model(**inputs)


def residual(model, rows, seed=7):
    return torch.randn(rows, model.params.dim, generator=torch.Generator().manual_seed(seed))


def with_torch_hook(model, module, *, pre=None, post=None):
    handle = module.register_forward_pre_hook(pre) if pre else module.register_forward_hook(post)
    try:
        return forward(model)
    finally:
        handle.remove()


class Adds:
    """Adds a fixed tensor at one point (and one layer)."""

    def __init__(self, point, delta, layer=None):
        self.delta, self.layer = delta, layer
        setattr(self, point, self._add_at_layer if point.startswith("layer") else self._add)

    def _add(self, x, ctx):
        return x + self.delta

    def _add_at_layer(self, index, x, ctx):
        return x + self.delta if index == self.layer else x


def joint_rows(model):
    p = model.params
    return 5 + 3 + 2 * (8 * 8) // p.patch_size ** 2


def test_nothing_attached_and_pass_through_entries_are_the_plain_forward(model):
    plain = forward(model)

    class PassThrough:
        def captions(self, cap, ctx):
            return cap

        def layer_output(self, index, joint, ctx):
            return joint

        def attention(self, index, q, k, v, segments, ctx, run):
            return run(q, k, v, segments)

        def joint_layers(self, run, joint, ctx):
            return run(run(joint, 0, 1), 1)

    model.seam.attach("pass", PassThrough())
    assert torch.equal(forward(model), plain)
    model.seam.detach("pass")
    assert torch.equal(forward(model), plain)


def test_layer_input_and_output_equal_a_hook_on_the_layer(model):
    r = residual(model, joint_rows(model))
    reference = with_torch_hook(model, model.layers[1], pre=lambda m, args: (args[0] + r, *args[1:]))
    model.seam.attach("in", Adds("layer_input", r, layer=1))
    assert torch.equal(forward(model), reference)
    model.seam.detach("in")
    # Adding after layer 0 is adding before layer 1.
    model.seam.attach("out", Adds("layer_output", r, layer=0))
    assert torch.equal(forward(model), reference)
    model.seam.detach("out")
    assert not torch.allclose(reference, forward(model))


def test_captions_and_before_final_equal_hooks(model):
    cap = residual(model, 5 + 3, seed=1)
    reference = with_torch_hook(model, model.context_refiner[-1], post=lambda m, args, out: out + cap)
    model.seam.attach("cap", Adds("captions", cap))
    assert torch.allclose(forward(model), reference, atol=0, rtol=0)
    model.seam.detach("cap")

    img = residual(model, 2 * (8 * 8) // model.params.patch_size ** 2, seed=2)
    reference = with_torch_hook(model, model.final_layer, pre=lambda m, args: (args[0] + img, *args[1:]))
    model.seam.attach("final", Adds("before_final", img))
    assert torch.equal(forward(model), reference)


def test_attention_entries_replace_the_attention_and_nest_in_attach_order(model):
    def zero_out(module, args, out):
        return torch.zeros_like(out)

    reference = with_torch_hook(model, model.layers[0].attention.out, post=zero_out)

    class Silence:
        def attention(self, index, q, k, v, segments, ctx, run):
            out = run(q, k, v, segments)
            return torch.zeros_like(out) if index == 0 else out

    model.seam.attach("silence", Silence())
    assert torch.equal(forward(model), reference)

    calls = []

    class Record:
        def __init__(self, tag):
            self.tag = tag

        def attention(self, index, q, k, v, segments, ctx, run):
            calls.append((self.tag, index))
            return run(q, k, v, segments)

    model.seam.attach("outer", Record("outer"))
    assert torch.equal(forward(model), reference)
    # The later entry runs first and calls the earlier one through ``run``.
    assert calls == [("outer", 0), ("outer", 1)]
    model.seam.detach("silence")
    model.seam.attach("inner", Record("inner"))
    calls.clear()
    forward(model)
    assert calls == [("inner", 0), ("outer", 0), ("inner", 1), ("outer", 1)]


def test_registry_lists_refuses_duplicates_and_detaches_its_hooks(model):
    seen = []
    model.seam.attach("probe", object())
    model.seam.hook("probe", model.layers[1].feed_forward, pre=lambda m, args: seen.append(1))
    assert model.seam.entries() == [("probe", (), 1)]
    assert "probe: 1 module hook" in model.seam.describe()
    with pytest.raises(RuntimeError, match="already carries 'probe'"):
        model.seam.attach("probe", object())
    forward(model)
    assert seen == [1]
    model.seam.detach("probe")
    forward(model)
    assert seen == [1] and not model.layers[1].feed_forward._forward_pre_hooks
    assert model.seam.entries() == [] and dict(model.attachments) == {}
    with pytest.raises(TypeError):
        model.attachments["x"] = 1   # read-only: attach through the seam


def _lora(p, seed):
    gen = torch.Generator().manual_seed(seed)
    deltas = {"layers.1.feed_forward.w2": [LowRank(torch.randn(4, p.ffn_dim, generator=gen),
                                                   torch.randn(p.dim, 4, generator=gen), 0.5)]}
    return ParsedLora(Path("x.safetensors"), "test", "test", deltas, {k: "applied" for k in deltas})


def test_a_lora_copy_has_its_own_seam_and_lists_each_lora(model):
    plain = forward(model)
    once = apply_lora(model, _lora(model.params, 1), 1.0)
    twice = apply_lora(once, _lora(model.params, 2), 0.5)
    assert model.seam.names() == [] and once.seam.names() == ["lora"]
    assert twice.seam.names() == ["lora", "lora1"]
    assert [hooks for _, _, hooks in twice.seam.entries()] == [1, 1]
    # Detaching the second LoRA from the copy gives the first one's model back; the others are untouched.
    with_both = forward(twice)
    twice.seam.detach("lora1")
    assert torch.equal(forward(twice), forward(once))
    assert not torch.equal(with_both, forward(once))
    assert torch.equal(forward(model), plain)
    # The merge reads the LoRAs from the seam.
    merged = merged_state_dict(once)
    w2 = "layers.1.feed_forward.w2.weight"
    delta = _lora(model.params, 1).deltas["layers.1.feed_forward.w2"][0]
    assert torch.allclose(merged[w2], model.state_dict()[w2] + delta.scale * delta.up @ delta.down, atol=1e-6)
