"""Step distillation (``training/step_distill.py``), the files it writes, ``distill --steps`` and the
sampler's use of a student's own settings, on a tiny random guidance-distilled model.

The references are written here: the teacher's Euler path over a step's interval on the finer
nested grid, with one teacher forward per sub-step, and the error of the student's one step
against it.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from factories import random_dit, tiny_params, with_guidance, write_dit_checkpoint

from nextdit_nodes.dit.own_settings import own_settings
from nextdit_nodes.files.errors import WeightsError
from nextdit_nodes.loaders import load_dit
from nextdit_nodes.nodes import host
from nextdit_nodes.nodes.sampling import NextDiTSampler
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import SamplingReport, sample
from nextdit_nodes.sampling.schedule import time_grid
from nextdit_nodes.text.conditioning import save_conditionings
from nextdit_nodes.training.distill import save_student
from nextdit_nodes.training.step_distill import (StepDistillConfig, _next_round, make_step_student, step_distill,
                                                 teacher_target, teacher_velocity)

W = 3.0


@pytest.fixture(scope="module")
def guided():
    """A 'guidance-distilled' tiny model: random weights with a guidance embedder whose last layer
    is not zero, so the scale matters."""
    model = random_dit(with_guidance(tiny_params()), seed=4)
    with torch.no_grad():
        model.guidance_embedder.mlp[2].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    return model


def conditioning(params, seed=0, length=5):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, params.cap_dim, generator=g),
             {"pooled_output": torch.randn(1, params.clip_dim, generator=g)}]]


def _call(model, x, t, cond):
    feats, extras = cond[0]
    b = x.shape[0]
    return model(x, torch.full((b,), t), feats.expand(b, -1, -1), torch.ones(b, feats.shape[1], dtype=torch.bool),
                 extras["pooled_output"].expand(b, -1), torch.full((b,), W))


def two_step_error(student_model, teacher, cond, steps=2, samples=6, seed=9):
    """Mean squared error of the student's one step against the teacher's two Euler steps on the
    2N grid, at states along the student's own N-step trajectories."""
    coarse, fine = time_grid(steps, 6.0), time_grid(2 * steps, 6.0)
    x = torch.randn(samples, 16, 4, 4, generator=torch.Generator().manual_seed(seed))
    errors = []
    with torch.no_grad():
        for i in range(steps):
            mid = x + (fine[2 * i + 1] - fine[2 * i]) * _call(teacher, x, fine[2 * i], cond)
            end = mid + (fine[2 * i + 2] - fine[2 * i + 1]) * _call(teacher, mid, fine[2 * i + 1], cond)
            v = _call(student_model, x, coarse[i], cond)
            errors.append(((x + (coarse[i + 1] - coarse[i]) * v - end) ** 2).mean())
            x = x + (coarse[i + 1] - coarse[i]) * v
    return torch.stack(errors).mean().item()


def test_rounds_and_bad_configs():
    assert StepDistillConfig(steps=1, start_steps=16).rounds() == [(8, 2), (4, 2), (2, 2), (1, 2)]
    assert StepDistillConfig(steps=4, start_steps=8).rounds() == [(4, 2)]
    assert StepDistillConfig(steps=2, method="segment", teacher_steps=24).rounds() == [(2, 12)]
    for bad in (dict(steps=3, start_steps=16), dict(steps=4, start_steps=4), dict(method="segment", teacher_steps=6),
                dict(method="consistency"), dict(width=30)):
        with pytest.raises(ValueError):
            StepDistillConfig(**bad)
    fixed, ranged = StepDistillConfig(guidance_min=4, guidance_max=4), StepDistillConfig(guidance_min=1, guidance_max=6)
    assert fixed.own_settings() == SamplerSettings(4, "euler", 6.0, 1.0, 4.0)
    assert ranged.own_settings().guidance is None


def test_teacher_target_is_the_teachers_euler_path(guided):
    student = make_step_student(guided, "lora", rank=2)
    with torch.no_grad():
        for adapter in student.adapters.by_name.values():
            adapter.up.normal_()        # the student differs from its teacher: the target must not use it
    cond = conditioning(guided.params)
    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    fine = time_grid(12, 6.0)
    times = torch.tensor([fine[3:7], fine[6:10]])                     # two states, K = 3 sub-steps each
    expected = []
    with torch.no_grad():
        for row, x0 in zip(times.tolist(), x):
            end = x0[None]
            for a, b in zip(row, row[1:]):
                end = end + (b - a) * _call(guided, end, a, cond)
            expected.append((end - x0[None]) / (row[-1] - row[0]))
        from nextdit_nodes.text.conditioning import prompt_batches
        batch = prompt_batches(cond, 2, guided.params.cap_dim, guided.params.clip_dim)[0]
        w = torch.full((2,), W)
        target = teacher_target(lambda x_, t_: teacher_velocity(student, x_, t_, batch, w), x, times)
    assert torch.allclose(target, torch.cat(expected), atol=1e-5)


# Measured on this model: 2.1× lower (lora: attention and MLP adapters, embedder frozen) and 6×
# (full); a random network's two-step map is far from smooth.
@pytest.mark.parametrize("mode,lr,factor", [("lora", 2e-3, 1.6), ("full", 5e-4, 3.0)])
def test_one_round_learns_two_teacher_steps_in_one_and_leaves_the_model(guided, mode, lr, factor):
    cond = conditioning(guided.params)
    before = {k: v.clone() for k, v in guided.state_dict().items()}
    config = StepDistillConfig(steps=2, start_steps=4, mode=mode, rank=32, iterations=250, batch_size=16, lr=lr,
                               guidance_min=W, guidance_max=W, width=32, height=32)
    initial = two_step_error(guided, guided, cond)
    student = step_distill(guided, [cond], config, progress=False)
    final = two_step_error(student.model, guided, cond)
    assert initial > 1e-3
    assert final < initial / factor, (initial, final)
    assert all(torch.equal(v, before[k]) for k, v in guided.state_dict().items())


def cfg_two_step_error(student_model, teacher, cond, negative, steps=2, samples=6, seed=9):
    """As two_step_error, against the CFG teacher's two Euler steps: v_u + W·(v_c − v_u), each
    branch its own forward of the teacher (no guidance input)."""
    def cfg(x, t):
        v_c, v_u = (model_call(teacher, x, t, c) for c in (cond, negative))
        return v_u + W * (v_c - v_u)

    def model_call(model, x, t, c):
        feats, extras = c[0]
        b = x.shape[0]
        return model(x, torch.full((b,), t), feats.expand(b, -1, -1),
                     torch.ones(b, feats.shape[1], dtype=torch.bool), extras["pooled_output"].expand(b, -1))

    coarse, fine = time_grid(steps, 6.0), time_grid(2 * steps, 6.0)
    x = torch.randn(samples, 16, 4, 4, generator=torch.Generator().manual_seed(seed))
    errors = []
    with torch.no_grad():
        for i in range(steps):
            mid = x + (fine[2 * i + 1] - fine[2 * i]) * cfg(x, fine[2 * i])
            end = mid + (fine[2 * i + 2] - fine[2 * i + 1]) * cfg(mid, fine[2 * i + 1])
            v = _call(student_model, x, coarse[i], cond)
            errors.append(((x + (coarse[i + 1] - coarse[i]) * v - end) ** 2).mean())
            x = x + (coarse[i + 1] - coarse[i]) * v
    return torch.stack(errors).mean().item()


def test_with_the_cfg_teacher_the_first_round_learns_its_guided_paths_not_the_students(guided):
    # A teacher unrelated to the guided model: its CFG paths are a different target, so only a
    # student trained on them gets close to them.
    teacher = random_dit(tiny_params(), seed=11)
    cond, negative = conditioning(guided.params), conditioning(guided.params, seed=3, length=2)
    config = StepDistillConfig(steps=2, start_steps=4, mode="full", iterations=250, batch_size=16, lr=2e-3,
                               guidance_min=W, guidance_max=W, width=32, height=32)
    own = step_distill(guided, [cond], config, progress=False)
    taught = step_distill(guided, [cond], config, progress=False, cfg_teacher=teacher, negative=negative)
    # Measured: against the CFG teacher's paths 1.73 before, 0.76 taught, 1.73 own; against the
    # guided model's own paths 0.019 before, 0.77 taught, 0.008 own.
    initial = cfg_two_step_error(guided, teacher, cond, negative)
    assert cfg_two_step_error(taught.model, teacher, cond, negative) < initial / 2
    assert cfg_two_step_error(own.model, teacher, cond, negative) > 0.9 * initial
    assert two_step_error(taught.model, guided, cond) > 10 * two_step_error(own.model, guided, cond)
    with pytest.raises(ValueError, match="negative"):
        step_distill(guided, [cond], config, progress=False, cfg_teacher=teacher)
    with pytest.raises(ValueError, match="without guidance embedder"):
        step_distill(guided, [cond], config, progress=False, cfg_teacher=guided, negative=negative)


def test_a_new_round_starts_from_the_trained_student_as_its_teacher(guided):
    cond = conditioning(guided.params)
    x = torch.randn(2, 16, 4, 4)
    student = make_step_student(guided, "lora", rank=2)
    with torch.no_grad():
        for adapter in student.adapters.by_name.values():
            adapter.up.normal_(0, 0.1)
        trained = _call(student.model, x, 0.4, cond)
        after = _next_round(student, rank=2, seed=1)
        assert torch.allclose(_call(after.model, x, 0.4, cond), trained, atol=1e-5)   # new adapters start at 0
        with after.adapters.disabled():
            assert torch.allclose(_call(after.model, x, 0.4, cond), trained, atol=1e-5)   # the teacher now
        assert not torch.allclose(_call(guided, x, 0.4, cond), trained, atol=1e-4)       # the original untouched


def test_a_students_file_sets_the_samplers_defaults_and_the_user_can_override_them(guided, tmp_path):
    cond = conditioning(guided.params)
    config = StepDistillConfig(steps=2, start_steps=4, rank=2, iterations=2, batch_size=2, guidance_min=W,
                               guidance_max=W, width=32, height=32)
    student = step_distill(guided, [cond], config, progress=False)
    path = save_student(student, tmp_path / "s.safetensors", metadata=config.own_settings().to_metadata())
    loaded = load_dit(path)
    assert own_settings(loaded) == SamplerSettings(2, "euler", 6.0, 1.0, W)

    calls = []
    handle = loaded.register_forward_hook(lambda module, args, out: calls.append(args[5][0].item()))
    try:
        report = SamplingReport()
        # steps 0: the file's 2 euler steps at cfg 1 and guidance 3, though the call asks for midpoint and cfg 5
        own = sample(loaded, cond, None, SamplerSettings(steps=0, solver="midpoint", shift=3.0, cfg=5.0, cfg_trunc=1.0),
                     width=32, height=32, seed=0, report=report)
        assert calls == [W, W] and report.own_settings
        assert report.describe().startswith("2 euler steps, shift 6, cfg 1, guidance 3")
        reference = sample(loaded, cond, None, SamplerSettings(steps=2, solver="euler", cfg=1.0, guidance=W, cfg_trunc=1.0),
                           width=32, height=32, seed=0)
        assert torch.equal(own["samples"], reference["samples"])
        calls.clear()
        sample(loaded, cond, None, SamplerSettings(steps=3, solver="midpoint", cfg=1.0, guidance=5.0, cfg_trunc=1.0),
               width=32, height=32, seed=0)   # overridden
        assert calls == [5.0] * 6
    finally:
        handle.remove()

    updates = []
    previous = host.set_progress_hook(lambda done, total, preview, note: updates.append((done, total)))
    try:
        result = NextDiTSampler().sample(loaded, cond, 32, 32, 1, 0, 0, "midpoint", 6.0, 5.0, 0.0, 1.0, 0.0)
    finally:
        host.set_progress_hook(previous)
    assert [total for _, total in updates] == [2, 2] and "the model's own settings" in result["ui"]["text"][0]
    assert torch.equal(result["result"][0]["samples"], reference["samples"])
    with pytest.raises(ValueError, match="records none"):
        sample(guided, cond, None, SamplerSettings(steps=0, solver="euler", cfg=1.0, guidance=W, cfg_trunc=1.0),
               width=32, height=32, seed=0)


def test_damaged_settings_metadata_is_refused_naming_the_key(guided, tmp_path):
    student = make_step_student(guided, "lora", rank=2)
    path = save_student(student, tmp_path / "bad.safetensors", metadata={"nextdit_steps": "four"})
    with pytest.raises(WeightsError, match="nextdit_steps"):
        load_dit(path)


def distill_cli(tmp_path, params):
    """The command line's parser, a tiny teacher file ``tiny.safetensors`` and a conditionings file
    (one prompt, a negative)."""
    from nextdit_nodes.commands import distill as command

    teacher_path = tmp_path / "tiny.safetensors"
    write_dit_checkpoint(teacher_path, params, seed=2)
    conditionings = save_conditionings(tmp_path / "prompts.safetensors", [conditioning(params, 1)],
                                       conditioning(params, 2))
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    return parser, teacher_path, conditionings


def test_distill_steps_from_a_teacher_writes_both_students_and_resumes(tmp_path):
    from nextdit_nodes.commands import distill as command

    params = tiny_params()
    parser, teacher_path, conditionings = distill_cli(tmp_path, params)
    common = ["--conditionings", str(conditionings), "--iterations", "2", "--batch-size", "2", "--width", "32",
              "--height", "32", "--rank", "2", "--device", "cpu", "--no-progress", "--steps", "2",
              "--start-steps", "8", "--step-iterations", "2", "--step-guidance", "4", "--save-rounds"]
    args = parser.parse_args(["distill", str(teacher_path), *common])
    assert args.func(args) == 0
    guidance_student = tmp_path / "tiny-distilled.safetensors"
    output = tmp_path / "tiny-distilled-2step.safetensors"
    round_student = tmp_path / "tiny-distilled-4step.safetensors"
    assert load_dit(guidance_student).params.guidance_embed and own_settings(load_dit(guidance_student)) is None
    assert own_settings(load_dit(round_student)) == SamplerSettings(4, "euler", 6.0, 1.0, 4.0)
    student = load_dit(output)
    assert own_settings(student) == SamplerSettings(2, "euler", 6.0, 1.0, 4.0)
    calls = []
    student.register_forward_hook(lambda *a: calls.append(1))
    sample(student, conditioning(params, 1), None, SamplerSettings(steps=0, solver="midpoint", cfg=1.0, cfg_trunc=1.0),
           width=32, height=32, seed=0)
    assert len(calls) == 2
    from safetensors import safe_open
    with safe_open(str(output), "pt") as f:      # the teacher was given: its CFG paths were the targets
        assert f.metadata()["step_targets"] == "CFG of tiny.safetensors"

    # Again: the files exist. Without --resume the guidance stage refuses to redo its student;
    # with it (and --overwrite for the output) both earlier students are reused, not retrained.
    with pytest.raises(command.DistillUsageError, match="--resume"):
        args.func(args)
    stamps = {p: p.stat().st_mtime_ns for p in (guidance_student, round_student)}
    resumed = parser.parse_args(["distill", str(teacher_path), *common, "--resume", "--overwrite"])
    assert resumed.func(resumed) == 0
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert own_settings(load_dit(output)).steps == 2


def test_distill_steps_cfg_teacher_options(tmp_path):
    from safetensors import safe_open

    from nextdit_nodes.commands import distill as command

    params = tiny_params()
    parser, teacher_path, conditionings = distill_cli(tmp_path, params)
    student_path = tmp_path / "guided.safetensors"
    write_dit_checkpoint(student_path, with_guidance(params), seed=3)
    common = ["--conditionings", str(conditionings), "--batch-size", "2", "--width", "32", "--height", "32",
              "--rank", "2", "--device", "cpu", "--no-progress", "--steps", "2", "--start-steps", "4",
              "--step-iterations", "1", "--overwrite"]

    def targets(*extra):
        args = parser.parse_args(["distill", *extra, *common])
        assert args.func(args) == 0
        with safe_open(str(tmp_path / "guided-2step.safetensors"), "pt") as f:
            return f.metadata()["step_targets"]

    assert targets(str(student_path)) == "the guidance-distilled student's own paths"
    assert targets(str(student_path), "--cfg-teacher", str(teacher_path)) == "CFG of tiny.safetensors"
    assert targets(str(student_path), "--cfg-teacher", str(teacher_path), "--student-targets") == \
        "the guidance-distilled student's own paths"
    args = parser.parse_args(["distill", str(teacher_path), "--cfg-teacher", str(teacher_path), *common])
    with pytest.raises(command.DistillUsageError, match="Drop --cfg-teacher"):
        args.func(args)
