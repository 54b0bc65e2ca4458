"""Many processes, one job: ``train-lora``, ``distill`` and ``distill --steps`` launched by torchrun with 2 CPU processes
(gloo) give, after plain SGD steps, the weights one process computes with the combined batch, and
only the first process writes its file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys

import torch
from factories import tiny_params, write_dit_checkpoint
from nextdit_nodes.text.conditioning import save_conditionings
from runtime_models import DIT, GEMMA, JINA, VAE
from safetensors.torch import load_file
from test_lora_training import models, train_lora, write_dataset  # noqa: F401  (models: a fixture)


def torchrun(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "nextdit_nodes", *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def assert_same(a_path, b_path, changed_from=None, tolerance=1e-6):
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert set(a) == set(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= tolerance
    if changed_from is not None:   # the step did something, or equality would prove nothing
        assert max((a[k] - changed_from[k]).abs().max().item() for k in changed_from if k in a) > 1e-3


def random_conditionings(path, params):
    """Three random prompts and a negative, as `distill --conditionings` reads them."""
    g = torch.Generator().manual_seed(0)

    def one(length):
        return [[torch.randn(1, length, params.cap_dim, generator=g),
                 {"pooled_output": torch.randn(1, params.clip_dim, generator=g)}]]

    return save_conditionings(path, [one(5) for _ in range(3)], one(2))


def test_train_lora_on_two_processes_equals_one_process_with_the_combined_batch(models, tmp_path):  # noqa: F811
    data = write_dataset(tmp_path / "data")
    common = ("--steps", "1", "--optimizer", "sgd", "--lr", "5", "--cache-dir", str(tmp_path / "cache"))
    single = tmp_path / "single" / "lora.safetensors"
    assert train_lora(models, data, single, "--batch-size", "2", *common) == 0
    out = tmp_path / "ddp"
    torchrun("train-lora", str(data), "--dit", str(models / "diffusion_models" / DIT),
             "--gemma", str(models / "text_encoders" / GEMMA), "--jina", str(models / "text_encoders" / JINA),
             "--vae", str(models / "vae" / VAE), "--output", str(out / "lora.safetensors"),
             "--resolution", "32", "--rank", "4", "--save-dtype", "fp32", "--device", "cpu", "--no-progress",
             "--batch-size", "1", *common)
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]
    zero_up = {k: torch.zeros_like(v) for k, v in load_file(str(single)).items() if "lora_B" in k}  # B starts at 0
    assert_same(out / "lora.safetensors", single, changed_from=zero_up)


def distill_alone_and_on_two_processes(tmp_path, common: list[str]):
    """`distill` with batch 4 in this process and with batch 2 on each of two torchrun processes;
    the two students' paths (only the first process writes)."""
    from nextdit_nodes.commands import distill as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    single = tmp_path / "single" / "student.safetensors"
    args = parser.parse_args(["distill", *common, "--batch-size", "4", "--output", str(single)])
    assert args.func(args) == 0
    out = tmp_path / "ddp"
    torchrun("distill", *common, "--batch-size", "2", "--output", str(out / "student.safetensors"))
    assert sorted(p.name for p in out.iterdir()) == ["student.safetensors"]
    return single, out / "student.safetensors"


def test_distill_on_two_processes_equals_one_process_with_the_combined_batch(tmp_path):
    params = tiny_params()
    teacher = tmp_path / "teacher.safetensors"
    write_dit_checkpoint(teacher, params, seed=2)
    conditionings = random_conditionings(tmp_path / "prompts.safetensors", params)
    common = [str(teacher), "--conditionings", str(conditionings), "--iterations", "2", "--trajectory-steps", "2",
              "--width", "32", "--height", "32", "--rank", "2", "--device", "cpu", "--no-progress",
              "--optimizer", "sgd", "--lr", "0.5", "--embedder-lr", "0.5",
              "--scale-weighted-loss"]   # weights normalised over the job's whole batch
    single, ddp = distill_alone_and_on_two_processes(tmp_path, common)
    before = {k.removeprefix("module."): v for k, v in load_file(str(teacher)).items()}
    assert_same(ddp, single, changed_from=before)


def test_distill_steps_on_two_processes_equals_one_process_with_the_combined_batch(tmp_path):
    params = tiny_params()
    student = tmp_path / "guided.safetensors"
    write_dit_checkpoint(student, dataclasses.replace(params, guidance_embed=True), seed=2)
    conditionings = random_conditionings(tmp_path / "prompts.safetensors", params)
    common = [str(student), "--conditionings", str(conditionings), "--steps", "2", "--start-steps", "4",
              "--step-iterations", "2", "--width", "32", "--height", "32", "--rank", "2", "--device", "cpu",
              "--no-progress", "--lr", "0.01"]
    single, ddp = distill_alone_and_on_two_processes(tmp_path, common)
    before = {k.removeprefix("module."): v for k, v in load_file(str(student)).items()}
    # Adam (step distillation's optimizer) divides by the gradient's magnitude, so where a gradient
    # is nearly zero the summation order of two processes moves a weight by up to the learning rate
    # (measured: 3e-5 here, against 1.5e-2 with a wrongly weighted loss; the step moves 6e-3).
    assert_same(ddp, single, changed_from=before, tolerance=2e-4)


def test_the_command_line_frees_what_a_command_left_in_reference_cycles_before_it_returns(monkeypatch):
    """A torchrun trainer's DDP wrapper (and so its gloo group) outlives the command in a reference
    cycle; freed only at interpreter exit, gloo's threads can abort the finished job. With automatic
    collection off, only the command line's own collection can free it."""
    import gc
    import weakref

    from nextdit_nodes.commands import cli

    class Trainer:
        pass

    left = []

    def command(args):
        trainer = Trainer()
        trainer.schedule = [trainer.__init__, trainer]   # a cycle, like LambdaLR holding a bound method
        left.append(weakref.ref(trainer))
        return 0

    parser = argparse.ArgumentParser()
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(func=command)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    gc.disable()
    try:
        assert cli.main([]) == 0
        assert left[0]() is None
    finally:
        gc.enable()
