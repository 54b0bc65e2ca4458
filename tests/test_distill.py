"""Guidance distillation on a tiny random teacher, the saved student, and the ``distill`` command.

The error measure is written here, independently of ``training/distill.py``: states along the
teacher's own CFG Euler trajectories (two separate forwards per evaluation), the student given the
scale w, MSE against v_u + w·(v_c − v_u), averaged over w ∈ {1, 2.75, 4.5, 6.25, 8}.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from factories import random_dit, tiny_params, write_dit_checkpoint

from nextdit_nodes.loaders import load_dit
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import sample
from nextdit_nodes.sampling.schedule import time_grid
from nextdit_nodes.text.conditioning import load_conditionings, save_conditionings
from nextdit_nodes.training.distill import (DistillConfig, _TrajectoryPool, default_output_path, distill,
                                            guided_loss, make_student, save_student)

SCALES = (1.0, 2.75, 4.5, 6.25, 8.0)


def _prompt_pair(params, length=5, seed=0, eps=0.02):
    """A random prompt and its negative: the same caption with a slightly different pooled vector.

    A random network's CFG with unrelated prompts is an arbitrary function no short run can learn;
    here the guidance signal rides on the adaLN path (where the guidance embedder acts) and is small
    enough that the guided velocity is a smooth extrapolation (‖v_c − v_u‖ ≈ 2 % of ‖v_c‖, i.e.
    ~15 % at w = 8), which a few seconds of training must capture."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, length, params.cap_dim, generator=g)
    pooled = torch.randn(1, params.clip_dim, generator=g)
    positive = [[feats, {"pooled_output": pooled}]]
    negative = [[feats.clone(), {"pooled_output": pooled + eps * torch.randn(pooled.shape, generator=g)}]]
    return positive, negative


def _eval_points(teacher, positive, negative, latent_hw=(4, 4), steps=6, seed=123):
    (feats, extras), (nfeats, nextras) = positive[0], negative[0]
    ones = lambda f: torch.ones(1, f.shape[1], dtype=torch.bool)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    points = []
    with torch.no_grad():
        for w in SCALES:
            for _ in range(2):
                x = torch.randn(1, 16, *latent_hw, generator=g)
                grid = time_grid(steps, 6.0)
                for t0, t1 in zip(grid, grid[1:]):
                    t = torch.tensor([t0])
                    v_c = teacher(x, t, feats, ones(feats), extras["pooled_output"])
                    v_u = teacher(x, t, nfeats, ones(nfeats), nextras["pooled_output"])
                    target = v_u + w * (v_c - v_u)
                    points.append((x.clone(), t, w, target))
                    x = x + (t1 - t0) * target
    return points


def _error(model, positive, points):
    feats, extras = positive[0]
    with torch.no_grad():
        errors = [(model(x, t, feats, torch.ones(1, feats.shape[1], dtype=torch.bool), extras["pooled_output"],
                         torch.tensor([w])) - target).square().mean() for x, t, w, target in points]
    return torch.stack(errors).mean().item()


@pytest.fixture(scope="module")
def teacher():
    return random_dit(tiny_params(), seed=1)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_student_starts_as_the_teachers_conditional_branch(teacher, mode):
    positive, _ = _prompt_pair(teacher.params)
    feats, extras = positive[0]
    x, t, mask = torch.randn(2, 16, 4, 4), torch.tensor([0.2, 0.7]), torch.ones(2, feats.shape[1], dtype=torch.bool)
    args = (x, t, feats.expand(2, -1, -1), mask, extras["pooled_output"].expand(2, -1))
    student = make_student(teacher, mode, rank=4)
    with torch.no_grad():
        assert torch.allclose(student.model(*args, torch.tensor([3.0, 7.5])), teacher(*args), atol=1e-6)
    assert not hasattr(teacher, "guidance_embedder") and not teacher.params.guidance_embed


@pytest.mark.parametrize("mode,lr", [("lora", 1e-4), ("full", 3e-5)])
def test_error_against_the_teachers_cfg_velocity_drops_tenfold(teacher, mode, lr):
    positive, negative = _prompt_pair(teacher.params)
    before_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    points = _eval_points(teacher, positive, negative)
    # 60 iterations reach about 20x here (measured), twice the margin the test asks for.
    config = DistillConfig(mode=mode, rank=8, iterations=60, batch_size=16, lr=lr, embedder_lr=3e-3,
                           trajectory_steps=6, width=32, height=32, seed=0)
    initial = _error(make_student(teacher, mode, rank=8).model, positive, points)
    student = distill(teacher, [positive], negative, config, progress=False)
    final = _error(student.model, positive, points)
    assert initial > 1e-3                      # there is a guidance signal to learn
    assert final < initial / 10, (initial, final)
    # The teacher is untouched (lora mode shares its tensors with the student).
    assert all(torch.equal(v, before_weights[k]) for k, v in teacher.state_dict().items())


def test_scale_weighted_loss_counts_each_guidance_scale_alike():
    # Sample errors 1 (at w = 1) and 2 (at w = 2), squared 1 and 4, constant over elements.
    target = torch.zeros(2, 16, 4, 4)
    prediction = torch.stack([torch.full((16, 4, 4), 1.0), torch.full((16, 4, 4), 2.0)])
    w = torch.tensor([1.0, 2.0])
    assert guided_loss(prediction, target, w, False).item() == pytest.approx(2.5)   # (1 + 4) / 2
    # Weights 1/1² and 1/2²: (1·1 + 4·0.25) / (1 + 0.25) = 1.6.
    assert guided_loss(prediction, target, w, True).item() == pytest.approx(1.6)
    # Scales below 1 weigh as 1 (w = 0 would otherwise divide by zero).
    assert guided_loss(prediction, target, torch.tensor([0.0, 1.0]), True).item() == pytest.approx(2.5)
    # Under torchrun each process holds one sample; normalised over the job's scales, the mean of
    # the two processes' losses (what DDP's gradient average amounts to) is the whole batch's 1.6.
    shares = [guided_loss(prediction[i:i + 1], target[i:i + 1], w[i:i + 1], True, job_w=w).item() for i in (0, 1)]
    assert sum(shares) / 2 == pytest.approx(1.6)


@pytest.mark.parametrize("student_trajectories", [False, True])
def test_trajectories_advance_with_the_teacher_or_the_students_velocity(teacher, monkeypatch, student_trajectories):
    """On the first iteration the student is exactly the teacher's conditional branch (zero-initialised
    guidance embedder), so the velocity that moves the states is v_c on-policy and the guided
    v_u + w·(v_c − v_u) otherwise; both computed here with separate teacher forwards."""
    positive, negative = _prompt_pair(teacher.params)
    seen = []
    advance = _TrajectoryPool.advance

    def recording_advance(pool, velocity):
        t = torch.tensor([grid[step] for grid, step in zip(pool.grids, pool.step)])
        seen.append((pool.x.clone(), t, pool.w.clone(), velocity.clone()))
        advance(pool, velocity)

    monkeypatch.setattr(_TrajectoryPool, "advance", recording_advance)
    config = DistillConfig(rank=4, iterations=1, batch_size=3, trajectory_steps=4, width=32, height=32,
                           guidance_min=3.0, guidance_max=6.0, student_trajectories=student_trajectories)
    distill(teacher, [positive], negative, config, progress=False)
    (x, t, w, velocity), = seen
    (feats, extras), (nfeats, nextras) = positive[0], negative[0]
    b = x.shape[0]
    with torch.no_grad():
        v_c = teacher(x, t, feats.expand(b, -1, -1), torch.ones(b, feats.shape[1], dtype=torch.bool),
                      extras["pooled_output"].expand(b, -1))
        v_u = teacher(x, t, nfeats.expand(b, -1, -1), torch.ones(b, nfeats.shape[1], dtype=torch.bool),
                      nextras["pooled_output"].expand(b, -1))
    guided = v_u + w.view(-1, 1, 1, 1) * (v_c - v_u)
    assert (guided - v_c).abs().max() > 1e-3    # the two candidates differ
    expected, other = (v_c, guided) if student_trajectories else (guided, v_c)
    assert torch.allclose(velocity, expected, atol=1e-5)
    assert not torch.allclose(velocity, other, atol=1e-5)


def test_student_trajectories_need_the_data_free_states(teacher):
    positive, negative = _prompt_pair(teacher.params)
    config = DistillConfig(iterations=1, batch_size=2, width=32, height=32, student_trajectories=True)
    with pytest.raises(ValueError, match="data-free"):
        distill(teacher, [positive], negative, config, latents=torch.zeros(2, 16, 4, 4), progress=False)


def test_saved_student_loads_in_the_official_layout_and_samples_with_guidance(teacher, tmp_path):
    positive, negative = _prompt_pair(teacher.params)
    config = DistillConfig(mode="lora", rank=4, iterations=3, batch_size=2, trajectory_steps=2, width=32, height=32)
    student = distill(teacher, [positive], negative, config, progress=False)
    path = save_student(student, tmp_path / "student.safetensors", metadata={"teacher": "tiny"})
    with pytest.raises(FileExistsError):
        save_student(student, path)

    loaded = load_dit(path)
    assert loaded.params.guidance_embed
    assert set(loaded.state_dict()) == set(teacher.state_dict()) | {
        "guidance_embedder.mlp.0.weight", "guidance_embedder.mlp.0.bias",
        "guidance_embedder.mlp.2.weight", "guidance_embedder.mlp.2.bias"}
    # Merged LoRA: the plain loaded model equals the trained student with its adapters.
    feats, extras = positive[0]
    x, t = torch.randn(1, 16, 4, 4), torch.tensor([0.4])
    args = (x, t, feats, torch.ones(1, feats.shape[1], dtype=torch.bool), extras["pooled_output"], torch.tensor([5.0]))
    with torch.no_grad():
        assert torch.allclose(loaded(*args), student.model(*args), atol=1e-5)
        assert not torch.allclose(loaded(*args), teacher(*args[:5]), atol=1e-6)  # adapters were trained
    out = sample(loaded, positive, None, SamplerSettings(steps=2, solver="euler", cfg=1.0, guidance=4.0, cfg_trunc=1.0),
                 width=32, height=32, seed=0)
    assert torch.isfinite(out["samples"]).all()


def test_distilling_a_distilled_student_or_a_bad_range_is_refused(teacher, tmp_path):
    from dataclasses import replace

    with pytest.raises(ValueError, match="already has a guidance embedder"):
        make_student(random_dit(replace(teacher.params, guidance_embed=True)))
    with pytest.raises(ValueError, match="guidance range"):
        DistillConfig(guidance_min=5.0, guidance_max=2.0)


def test_conditionings_file_round_trip_drops_padding(teacher, tmp_path):
    p = teacher.params
    feats = torch.randn(1, 6, p.cap_dim)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    padded = [[feats, {"pooled_output": torch.randn(1, p.clip_dim), "attention_mask": mask}]]
    negative = [[torch.randn(1, 2, p.cap_dim), {"pooled_output": torch.randn(1, p.clip_dim)}]]
    path = save_conditionings(tmp_path / "c.safetensors", [padded, negative], negative)
    positives, neg = load_conditionings(path)
    assert len(positives) == 2 and torch.equal(positives[0][0][0], feats[:, :4])
    assert torch.equal(neg[0][0], negative[0][0])
    assert torch.equal(neg[0][1]["pooled_output"], negative[0][1]["pooled_output"])


def test_distill_command_writes_the_default_file_the_loader_reads(tmp_path):
    from nextdit_nodes.commands import distill as command

    params = tiny_params()
    teacher_path = tmp_path / "tiny-teacher.safetensors"
    write_dit_checkpoint(teacher_path, params, seed=2)   # a `module.`-prefixed training file
    positive, negative = _prompt_pair(params)
    conditionings = save_conditionings(tmp_path / "prompts.safetensors", [positive], negative)

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["distill", str(teacher_path), "--conditionings", str(conditionings),
                              "--iterations", "2", "--batch-size", "2", "--trajectory-steps", "2",
                              "--width", "32", "--height", "32", "--rank", "2", "--device", "cpu", "--no-progress",
                              "--scale-weighted-loss", "--student-trajectories"])
    assert args.scale_weighted_loss and args.student_trajectories
    assert args.func(args) == 0
    output = default_output_path(teacher_path)
    assert output.name == "tiny-teacher-distilled.safetensors" and output.is_file()
    assert load_dit(output).params.guidance_embed
    with pytest.raises(command.DistillUsageError, match="exists"):
        args.func(args)
    bad = parser.parse_args(["distill", str(teacher_path), "--device", "cpu"])
    with pytest.raises(command.DistillUsageError, match="exactly one of"):
        bad.func(bad)
    both = parser.parse_args(["distill", str(teacher_path), "--conditionings", str(conditionings), "--latents",
                              str(tmp_path / "latents.safetensors"), "--student-trajectories", "--device", "cpu"])
    with pytest.raises(command.DistillUsageError, match="--student-trajectories"):
        both.func(both)


def test_gradient_checkpointing_trains_the_same_student(teacher):
    positive, negative = _prompt_pair(teacher.params)
    base = dict(mode="lora", rank=4, iterations=3, batch_size=2, trajectory_steps=3, width=32, height=32,
                lr=1e-3, embedder_lr=1e-2)
    plain = distill(teacher, [positive], negative, DistillConfig(**base), progress=False).state_dict()
    checkpointed = distill(teacher, [positive], negative, DistillConfig(**base, checkpointing=True),
                           progress=False).state_dict()
    assert plain["guidance_embedder.mlp.2.weight"].abs().max() > 0  # it trained
    for key, value in plain.items():
        assert torch.allclose(value, checkpointed[key], atol=1e-6), key
