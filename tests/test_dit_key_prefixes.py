"""Next-DiT files under wrapper prefixes: the NewBie transformer class of diffusers PR #12789 keeps
the model as ``inner_model``; a prefix the loader does not know is named, not called "not a
Next-DiT"."""

from __future__ import annotations

import pytest
import torch
from factories import tiny_params, write_dit_checkpoint
from nextdit_nodes.dit.checkpoint import load_dit
from nextdit_nodes.files.errors import WeightsError


def test_an_inner_model_prefixed_checkpoint_loads_with_the_same_weights(tmp_path):
    path = tmp_path / "wrapped.safetensors"
    expected = write_dit_checkpoint(path, tiny_params(), seed=3, prefix="inner_model.")
    model = load_dit(path)
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in expected.items())


def test_an_unknown_prefix_is_named_and_the_message_does_not_contradict_itself(tmp_path):
    path = tmp_path / "odd.safetensors"
    write_dit_checkpoint(path, tiny_params(), prefix="ema_wrapper.")
    with pytest.raises(WeightsError) as raised:
        load_dit(path)
    message = str(raised.value)
    assert "'ema_wrapper.'" in message and "not a Next-DiT" not in message
