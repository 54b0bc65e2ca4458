"""train-controlnet: bad files reported and skipped, a ControlNet written that loads and changes the
output, resume, derived canny controls, and two gloo processes equal one process with the combined
batch."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from runtime_models import DIT, GEMMA, JINA, VAE
from safetensors.torch import load_file
from test_lora_training import models, write_dataset  # noqa: F401  (models: a fixture)

from nextdit_nodes.controlnet.apply import ActiveControl, controls_attached
from nextdit_nodes.controlnet.files import load_controlnet


def with_controls(folder):
    """write_dataset's folder plus a control image for every image but img3 (so it is skipped),
    and a truncated control image for img1 (skipped too)."""
    for index in (0, 1, 2):
        image = Image.open(folder / f"img{index}.png")
        edges = np.zeros((image.height, image.width, 3), dtype=np.uint8)
        edges[image.height // 4: 3 * image.height // 4, image.width // 3] = 255
        Image.fromarray(edges).save(folder / f"img{index}.control.png")
    data = (folder / "img1.control.png").read_bytes()
    (folder / "img1.control.png").write_bytes(data[: len(data) // 2])
    (folder / "broken.control.png").write_bytes((folder / "img0.control.png").read_bytes())
    return folder


def train(models, data, output, *extra):  # noqa: F811
    from nextdit_nodes.commands import train_controlnet as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args([
        "train-controlnet", str(data), "--dit", str(models / "diffusion_models" / DIT),
        "--gemma", str(models / "text_encoders" / GEMMA), "--jina", str(models / "text_encoders" / JINA),
        "--vae", str(models / "vae" / VAE), "--output", str(output), "--resolution", "32", "--blocks", "1",
        "--save-dtype", "fp32", "--device", "cpu", "--no-progress", *extra])
    return args.func(args)


def test_train_controlnet_skips_bad_files_and_writes_a_controlnet_that_changes_the_output(
        models, tmp_path, capsys):  # noqa: F811
    from nextdit_nodes.dit.checkpoint import load_dit

    data = with_controls(write_dataset(tmp_path / "data"))
    output = tmp_path / "out" / "edges.safetensors"
    assert train(models, data, output, "--steps", "3", "--batch-size", "1", "--lr", "1e-2") == 0
    printed = capsys.readouterr().out
    reasons = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line for line in printed.splitlines()
               if line.startswith("skipped")}
    assert set(reasons) == {"broken.png", "small.png", "wide.png", "img3.png", "img1.control.png"}
    assert "truncated or corrupt" in reasons["broken.png"] and "too small: 8x8" in reasons["small.png"]
    assert "no control image" in reasons["img3.png"]
    assert "control image: truncated or corrupt" in reasons["img1.control.png"]
    assert "2 images with control images train" in printed

    net = load_controlnet(output)
    assert net.metadata["nextdit_controlnet_control"] == "image"
    assert net.metadata["trainer"] == "nextdit-nodes train-controlnet"
    assert net.metadata["steps_done"] == "3" and '"blocks": 1' in net.metadata["nextdit_controlnet_training"]
    assert net.params.n_blocks == 1
    assert net.control_projections[0].weight.abs().max() > 0        # trained away from zero
    model = load_dit(models / "diffusion_models" / DIT)
    p = model.params
    g = torch.Generator().manual_seed(0)
    x, feats = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 5, p.cap_dim, generator=g)
    args = (x, torch.tensor([0.5]), feats, torch.ones(1, 5, dtype=torch.bool), torch.randn(1, p.clip_dim, generator=g))
    with torch.no_grad():
        plain = model(*args)
        with controls_attached(model, [ActiveControl(net, torch.randn(1, 16, 4, 4, generator=g), 1.0)]):
            controlled = model(*args)
    assert (controlled - plain).abs().max() > 1e-4


def test_canny_controls_and_resume_continue_exactly(models, tmp_path):  # noqa: F811
    data = write_dataset(tmp_path / "data")
    common = ("--control", "canny", "--lr", "1e-2", "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"))
    whole, part = tmp_path / "whole.safetensors", tmp_path / "part.safetensors"
    assert train(models, data, whole, "--steps", "3", *common) == 0
    assert train(models, data, part, "--steps", "3", "--save-every", "2", *common) == 0
    assert torch.load(tmp_path / "part.training-state.pt", weights_only=True)["step"] == 2
    assert (tmp_path / "part-step000002.safetensors").is_file()
    part.unlink()
    assert train(models, data, part, "--steps", "3", "--resume", *common) == 0
    a, b = load_file(str(whole)), load_file(str(part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from nextdit_nodes.commands.train_controlnet import TrainControlNetUsageError

    with pytest.raises(TrainControlNetUsageError, match="blocks"):     # other blocks cannot continue it
        train(models, data, part, "--steps", "3", "--resume", *common, "--blocks", "2")
    assert load_controlnet(whole).metadata["nextdit_controlnet_control"] == "canny"


def test_two_processes_equal_one_process_with_the_combined_batch(models, tmp_path):  # noqa: F811
    from test_distributed_training import assert_same, torchrun

    data = with_controls(write_dataset(tmp_path / "data"))
    common = ("--steps", "1", "--optimizer", "sgd", "--lr", "5", "--cache-dir", str(tmp_path / "cache"),
              "--init", "random")
    single = tmp_path / "single" / "cn.safetensors"
    assert train(models, data, single, "--batch-size", "2", *common) == 0
    out = tmp_path / "ddp"
    torchrun("train-controlnet", str(data), "--dit", str(models / "diffusion_models" / DIT),
             "--gemma", str(models / "text_encoders" / GEMMA), "--jina", str(models / "text_encoders" / JINA),
             "--vae", str(models / "vae" / VAE), "--output", str(out / "cn.safetensors"),
             "--resolution", "32", "--blocks", "1", "--save-dtype", "fp32", "--device", "cpu", "--no-progress",
             "--batch-size", "1", *common)
    assert sorted(p.name for p in out.iterdir()) == ["cn.safetensors"]
    zero = {k: torch.zeros_like(v) for k, v in load_file(str(single)).items() if "control_projections" in k}
    assert_same(out / "cn.safetensors", single, changed_from=zero)


def test_init_from_a_controlnet_file_fine_tunes_that_network(models, tmp_path):  # noqa: F811
    from nextdit_nodes.commands.train_controlnet import TrainControlNetUsageError
    from nextdit_nodes.dit.checkpoint import load_dit
    from nextdit_nodes.runtime.model_sources import MissingModelError
    from nextdit_nodes.training.controlnet_training import ControlNetTrainingConfig, new_controlnet

    data = write_dataset(tmp_path / "data")
    common = ("--control", "canny", "--lr", "1e-2", "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"))
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    assert train(models, data, first, "--steps", "2", *common) == 0
    start = new_controlnet(load_dit(models / "diffusion_models" / DIT), ControlNetTrainingConfig(init=str(first)))
    saved = load_file(str(first))
    assert set(start.state_dict()) == set(saved)
    assert all(torch.equal(start.state_dict()[k], saved[k]) for k in saved)   # starts exactly there
    assert train(models, data, second, "--steps", "1", "--init", str(first), *common,
                 "--blocks", "2") == 0                                         # the file's block count wins
    tuned = load_file(str(second))
    assert any(not torch.equal(tuned[k], saved[k]) for k in saved)            # and trains on
    recorded = json.loads(load_controlnet(second).metadata["nextdit_controlnet_training"])
    assert (recorded["init"], recorded["blocks"]) == ("first.safetensors", 1)  # its name, its real blocks
    with pytest.raises(TrainControlNetUsageError, match="init must be one of dit, random or a ControlNet"):
        train(models, data, second, "--steps", "1", "--init", "edges", "--overwrite", *common)
    with pytest.raises(MissingModelError, match="missing.safetensors"):
        train(models, data, second, "--steps", "1", "--init", "missing.safetensors", "--overwrite", *common)
