"""Compact students (``distill --layers K``, training/compact.py) of a tiny random teacher.

References written here, independently of the module: the parent with its layer list cut down by
hand; the joint layers' outputs read by PyTorch forward hooks and each sample's tokens sliced by
its caption length; the loader and the safetensors header for the written file.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import pytest
import torch
from factories import random_dit, tiny_params, write_dit_checkpoint
from test_distributed_training import assert_same, random_conditionings, torchrun

from nextdit_nodes.commands.arguments import UsageError
from nextdit_nodes.dit.own_settings import attach, own_settings
from nextdit_nodes.files.tensors import read_metadata
from nextdit_nodes.loaders import load_dit
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.training.compact import (CompactConfig, CompactTraining, _Inputs, checked_count, checked_keep,
                                            _Source, compact_distill, compact_metadata, evenly_spaced, layer_importance,
                                            make_compact, most_important, save_compact)
from nextdit_nodes.text.conditioning import pack, prompt_batches

N_LAYERS = 4


@pytest.fixture(scope="module")
def parent():
    return random_dit(tiny_params(n_layers=N_LAYERS), seed=1)


def _prompts(params, count=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def one(length):
        return [[torch.randn(1, length, params.cap_dim, generator=g),
                 {"pooled_output": torch.randn(1, params.clip_dim, generator=g)}]]

    return [one(3 + i) for i in range(count)], one(2)


def _inputs(params, cap_lens=(3, 6)):
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(len(cap_lens), max(cap_lens), params.cap_dim, generator=g)
    mask = torch.zeros(len(cap_lens), max(cap_lens), dtype=torch.bool)
    for row, n in enumerate(cap_lens):
        mask[row, :n] = True
    return (torch.randn(len(cap_lens), 16, 4, 4, generator=g), torch.tensor([0.3, 0.8]), feats, mask,
            torch.randn(len(cap_lens), params.clip_dim, generator=g))


def test_all_layers_kept_is_the_parent_bit_for_bit(parent):
    student = make_compact(parent, range(N_LAYERS))
    args = _inputs(parent.params)
    with torch.no_grad():
        assert torch.equal(student(*args), parent(*args))


def test_kept_layers_equal_the_parent_with_the_others_cut_out_by_hand(parent):
    keep = (0, 2, 3)
    student = make_compact(parent, keep)
    assert student.params.n_layers == 3 and len(student.layers) == 3
    reference = copy.deepcopy(parent)
    reference.layers = torch.nn.ModuleList(reference.layers[i] for i in keep)
    args = _inputs(parent.params)
    with torch.no_grad():
        assert torch.equal(student(*args), reference(*args))
        assert not torch.allclose(student(*args), parent(*args))
    # copies: training the student never writes into the parent
    assert student.layers[1].attention.qkv.weight.data_ptr() != parent.layers[2].attention.qkv.weight.data_ptr()


@pytest.mark.parametrize("keep, message", [((0, 4), "out of range"), ((1, 1, 2), "more than once"),
                                           ((-1,), "out of range"), ((), "at least one")])
def test_bad_keep_values_are_refused(keep, message):
    with pytest.raises(ValueError, match=message):
        checked_keep(keep, N_LAYERS)


def test_layer_counts_and_rules():
    with pytest.raises(ValueError, match="1..4"):
        checked_count(5, N_LAYERS)
    assert evenly_spaced(6, 3) == (0, 3, 5) and evenly_spaced(36, 18)[0] == 0 and evenly_spaced(36, 18)[-1] == 35
    assert len(set(evenly_spaced(36, 18))) == 18
    assert most_important([0.1, 0.5, 0.05, 0.5], 2) == (1, 3)


def test_importance_is_the_output_change_when_a_layer_is_skipped(parent):
    """A layer made into an identity (zero gates' weights) changes nothing when skipped."""
    positives, negative = _prompts(parent.params)
    model = copy.deepcopy(parent)
    for name, p in model.layers[1].named_parameters():   # the block's two residual branches off
        if "adaLN_modulation" in name:
            torch.nn.init.zeros_(p)
    config = CompactConfig(keep=(0,), batch_size=2, width=32, height=32)
    importance = layer_importance(model, positives, negative, config, iterations=2)
    assert importance[1] == 0.0 and min(importance[i] for i in (0, 2, 3)) > 1e-4
    assert most_important(importance, 3) == (0, 2, 3)


def _hooked(model, indices):
    """Outputs of the joint layers ``indices`` of the next forward, by forward hooks."""
    found, handles = {}, []
    for index in indices:
        handles.append(model.layers[index].register_forward_hook(
            lambda module, args, output, index=index: found.__setitem__(index, output)))
    return found, handles


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_losses_against_a_direct_computation(parent, weight):
    positives, negative = _prompts(parent.params)
    keep = (1, 3)
    training = CompactTraining(parent, positives, negative, CompactConfig(keep=keep, feature_weight=weight,
                                                                          batch_size=2, width=32, height=32))
    inputs = _fixed_inputs(parent, positives, negative)
    x, t, both = inputs.x, inputs.t, inputs.both
    loss, out, features, _ = training.losses(inputs)

    theirs, h1 = _hooked(parent, keep)
    mine, h2 = _hooked(training.student.model, range(2))
    with torch.no_grad():
        args = (torch.cat([x, x]), torch.cat([t, t]), both.feats, both.mask, both.pooled)
        target, prediction = parent(*args), training.student.model(*args)
    for h in h1 + h2:
        h.remove()
    lengths = [int(n) + 4 for n in both.mask.sum(1)]     # each sample: its caption, then 2×2 image tokens
    per_layer = []
    for new, old in enumerate(keep):
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        per_sample = [((mine[new][s:s + n] - theirs[old][s:s + n]) ** 2).mean() for s, n in zip(starts, lengths)]
        per_layer.append(sum(per_sample) / len(per_sample))
    expected_features = sum(per_layer) / len(per_layer)
    expected_out = ((prediction - target) ** 2).mean()
    torch.testing.assert_close(features.detach(), expected_features, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.detach(), expected_out, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss.detach(), expected_out + weight * expected_features, rtol=1e-5, atol=0)
    assert features > 0


def _fixed_inputs(parent, positives, negative):
    params = parent.params
    items = [b for c in positives[:2] for b in prompt_batches(c, 1, params.cap_dim, params.clip_dim)]
    neg = prompt_batches(negative, 1, params.cap_dim, params.clip_dim)
    x, t = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(9)), torch.tensor([0.4, 0.9])
    return _Inputs(x, t, torch.tensor([3.0, 3.0]), pack(items), pack(items + neg * 2))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_training_reduces_both_losses(parent, mode):
    """Both losses on held-out states (the parent's trajectories from another seed) fall."""
    positives, negative = _prompts(parent.params)
    config = CompactConfig(keep=(0, 2, 3), mode=mode, iterations=60, batch_size=4, lr=3e-4 if mode == "full" else 3e-3,
                           rank=4, width=32, height=32, trajectory_steps=4, guidance_max=2.0)
    training = CompactTraining(parent, positives, negative, config)
    probe = _Source(parent, positives, negative, dataclasses.replace(config, seed=7), training.job)
    held_out = []
    for _ in range(6):
        held_out.append(probe.inputs())
        probe.advance(probe.parent_forward(held_out[-1]), held_out[-1])

    def losses():
        with torch.no_grad():
            return torch.stack([torch.stack(training.losses(i)[1:3]) for i in held_out]).mean(0)

    before = losses()
    for _ in range(config.iterations):
        training.step()
    after = losses()
    assert (after < 0.9 * before).all(), (before, after)


def test_a_guidance_parent_keeps_its_embedder_and_recorded_settings(tmp_path):
    params = tiny_params(n_layers=3, guidance_embed=True)
    parent = random_dit(params, seed=3)
    attach(parent, SamplerSettings(steps=4, solver="euler", shift=3.0, cfg=1.0, guidance=4.0))
    positives, negative = _prompts(params)
    config = CompactConfig(keep=(0, 2), iterations=2, batch_size=2, width=32, height=32)
    student = compact_distill(parent, positives, negative, config, progress=False)
    assert student.model.params.guidance_embed
    path = save_compact(student, tmp_path / "s.safetensors",
                        metadata=compact_metadata(parent, (0, 2), config, "parent.safetensors", "abc"))
    loaded = load_dit(path)
    assert loaded.params.n_layers == 2 and loaded.params.guidance_embed
    assert own_settings(loaded) == own_settings(parent)


def test_resume_continues_exactly(parent, tmp_path):
    positives, negative = _prompts(parent.params)
    config = CompactConfig(keep=(0, 2), iterations=4, batch_size=2, lr=1e-3, width=32, height=32,
                           trajectory_steps=2)
    straight = compact_distill(parent, positives, negative, config, progress=False).state_dict()
    state = tmp_path / "state.pt"
    compact_distill(parent, positives, negative, config, progress=False, state_path=state, save_every=1,
                    stop_after=2)
    resumed = compact_distill(parent, positives, negative, config, progress=False, state_path=state,
                              save_every=1, resume=True).state_dict()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    with pytest.raises(ValueError, match="other settings"):
        compact_distill(parent, positives, negative, dataclasses.replace(config, lr=1e-2), progress=False,
                        state_path=state, resume=True)


def _parser():
    from nextdit_nodes.commands import distill as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    return parser


@pytest.fixture
def files(tmp_path):
    params = tiny_params(n_layers=N_LAYERS)
    teacher = tmp_path / "teacher.safetensors"
    write_dit_checkpoint(teacher, params, seed=2)
    return teacher, random_conditionings(tmp_path / "prompts.safetensors", params)


def test_command_writes_a_file_the_loader_reads_with_k_layers(files, tmp_path):
    teacher, conditionings = files
    args = _parser().parse_args(["distill", str(teacher), "--conditionings", str(conditionings), "--layers", "2",
                                 "--layer-rule", "even", "--iterations", "2", "--batch-size", "2", "--width", "32",
                                 "--height", "32", "--no-progress", "--device", "cpu"])
    assert args.func(args) == 0
    path = tmp_path / "teacher-2layers.safetensors"
    model = load_dit(path)
    assert model.params.n_layers == 2
    metadata = read_metadata(path)
    assert metadata["kept_layers"] == "0,3" and metadata["parent"] == "teacher.safetensors"
    assert metadata["nextdit_distilled"] == "compact" and len(metadata["parent_fingerprint"]) == 16
    assert metadata["distill_mode"] == "full" and metadata["parent_layers"] == str(N_LAYERS)


@pytest.mark.parametrize("options, message", [
    (["--keep", "0,7"], "out of range"), (["--keep", "1,1"], "more than once"), (["--layers", "9"], "1..4"),
    (["--keep", "0,x"], "comma"), (["--layers", "3", "--keep", "0,1"], "agree"),
    (["--layers", "2", "--steps", "4"], "different students")])
def test_command_refuses_bad_layer_choices(files, options, message):
    teacher, conditionings = files
    args = _parser().parse_args(["distill", str(teacher), "--conditionings", str(conditionings), *options])
    with pytest.raises(UsageError, match=message):
        args.func(args)


def test_two_processes_equal_one_process_with_the_combined_batch(files, tmp_path):
    from safetensors.torch import load_file

    teacher, conditionings = files
    common = [str(teacher), "--conditionings", str(conditionings), "--keep", "0,2", "--iterations", "2",
              "--trajectory-steps", "2", "--width", "32", "--height", "32", "--device", "cpu", "--no-progress",
              "--lr", "0.01", "--feature-weight", "0.5"]
    single = tmp_path / "single" / "student.safetensors"
    args = _parser().parse_args(["distill", *common, "--batch-size", "4", "--output", str(single)])
    assert args.func(args) == 0
    out = tmp_path / "ddp"
    torchrun("distill", *common, "--batch-size", "2", "--output", str(out / "student.safetensors"))
    assert sorted(p.name for p in out.iterdir()) == ["student.safetensors"]
    before = make_compact(load_dit(teacher), (0, 2)).state_dict()
    # AdamW: where a gradient is nearly zero the two processes' summation order moves a weight by up
    # to the learning rate (as for `distill --steps`).
    assert_same(out / "student.safetensors", single, changed_from=before, tolerance=2e-4)
    assert set(load_file(str(single))) == set(before)
