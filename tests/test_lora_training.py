"""LoRA training (``train-lora``) on tiny models: the data report, the caches, the file both loaders
read, resuming, and the pieces (layouts, filters, buckets, batch order, time sampling).

References are computed here independently: the merged weights W + alpha/rank · B·A from the
file's own tensors, the FLUX constants 0.1159 / 0.3611 written out, the inference nodes' own text
encoding, SHA-256 of the file with hashlib, the shifted logit-normal formula.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from factories import dit_from_state_dict, random_inputs
from nextdit_nodes.dit.checkpoint import load_dit
from nextdit_nodes.lora.apply import load_lora
from nextdit_nodes.training.buckets import BatchOrder, bucket_sizes, nearest_bucket
from nextdit_nodes.training.flow import logit_normal_times
from nextdit_nodes.training.lora_data import Filters, scan_dataset
from PIL import Image
from runtime_models import DIT, GEMMA, JINA, VAE, tiny_newbie_params, write_tiny_models
from safetensors import safe_open
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def _image(path, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_dataset(folder):
    """Four usable images (two .txt, one .xml, one RGBA), one truncated, one too small, one too wide."""
    folder.mkdir()
    for index, (width, height) in enumerate([(32, 48), (48, 32), (32, 32), (40, 40)]):
        _image(folder / f"img{index}.png", width, height, index)
    (folder / "img0.txt").write_text("a red square")
    (folder / "img1.txt").write_text("a blue circle")
    (folder / "img2.xml").write_text("<character_1>\n<n>circle</n>\n</character_1>")
    (folder / "img3.txt").write_text("a green triangle")
    data = (folder / "img2.png").read_bytes()
    (folder / "broken.png").write_bytes(data[:len(data) // 2])
    (folder / "broken.txt").write_text("broken")
    _image(folder / "small.png", 8, 8, 7)
    (folder / "small.txt").write_text("small")
    _image(folder / "wide.png", 96, 16, 8)
    (folder / "wide.txt").write_text("wide")
    return folder


def train_lora(models, data, output, *extra):
    from nextdit_nodes.commands import train_lora as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args([
        "train-lora", str(data), "--dit", str(models / "diffusion_models" / DIT),
        "--gemma", str(models / "text_encoders" / GEMMA), "--jina", str(models / "text_encoders" / JINA),
        "--vae", str(models / "vae" / VAE), "--output", str(output), "--resolution", "32", "--rank", "4",
        "--save-dtype", "fp32", "--device", "cpu", "--no-progress", *extra])
    return args.func(args)


def merged_by_hand(base, lora_path):
    """The base model with each module's weight replaced by W + alpha/rank · B @ A (the file's tensors)."""
    tensors = load_file(str(lora_path))
    state = {k: v.clone() for k, v in base.state_dict().items()}
    modules = {k[len("diffusion_model."):-len(".alpha")] for k in tensors if k.endswith(".alpha")}
    for module in modules:
        down = tensors[f"diffusion_model.{module}.lora_A.weight"]
        up = tensors[f"diffusion_model.{module}.lora_B.weight"]
        alpha = float(tensors[f"diffusion_model.{module}.alpha"])
        state[f"{module}.weight"] += alpha / down.shape[0] * up @ down
    return dit_from_state_dict(base.params, state), modules


def test_train_lora_reports_bad_files_writes_a_lora_both_loaders_read_and_reuses_its_caches(
        models, tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    output = tmp_path / "out" / "style.safetensors"
    assert train_lora(models, data, output, "--steps", "2", "--batch-size", "2", "--lr", "1e-2") == 0
    printed = capsys.readouterr().out
    reasons = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line for line in printed.splitlines()
               if line.startswith("skipped")}
    assert set(reasons) == {"broken.png", "small.png", "wide.png"}
    assert "truncated or corrupt" in reasons["broken.png"]
    assert "too small: 8x8" in reasons["small.png"] and "at least 16 px" in reasons["small.png"]
    assert "aspect ratio 6.00" in reasons["wide.png"]
    # 4 images; 4 captions plus the empty one caption dropout uses.
    assert "4 images train, 3 skipped; latents: 0 from the cache, 4 encoded; text features: 0 from the cache, " \
           "5 encoded" in printed

    base = load_dit(models / "diffusion_models" / DIT)
    patched, report = load_lora(base, output)
    assert report.n_not_applied == 0
    reference, modules = merged_by_hand(base, output)
    assert report.n_applied == len(modules) == 5 * (2 + 2 + base.params.n_layers)   # every block's 5 linears
    inputs = random_inputs(base.params, [5, 3], latent_hw=(4, 4))
    with torch.no_grad():
        out, plain, expected = patched(**inputs), base(**inputs), reference(**inputs)
    assert (out - plain).abs().max() > 1e-4                          # the LoRA changes the output
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)

    # The keys ComfyUI core maps for every model: "diffusion_model.<state-dict key without .weight>"
    # (comfy/lora.py model_lora_keys_unet) with lora_A / lora_B / alpha (comfy/weight_adapter/lora.py).
    official = set(base.state_dict())
    with safe_open(str(output), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    for key in keys:
        module, _, part = key.removeprefix("diffusion_model.").rpartition(
            ".lora_A.weight" if key.endswith("A.weight") else ".lora_B.weight" if key.endswith("B.weight") else ".")
        assert key.startswith("diffusion_model.") and f"{module}.weight" in official, key
    assert metadata["lora_rank"] == "4" and metadata["lora_alpha"] == "4"
    sha = hashlib.sha256((models / "diffusion_models" / DIT).read_bytes()).hexdigest()
    assert metadata["base_model_sha256"] == sha
    assert json.loads(metadata["training_settings"])["steps"] == 2

    # Second run: every latent and text feature comes from the cache, and the result is the same.
    again = tmp_path / "again.safetensors"
    assert train_lora(models, data, again, "--steps", "2", "--batch-size", "2", "--lr", "1e-2") == 0
    assert "latents: 4 from the cache, 0 encoded; text features: 5 from the cache, 0 encoded" in capsys.readouterr().out
    first, second = load_file(str(output)), load_file(str(again))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cached_inputs_are_what_inference_computes(models, tmp_path):
    """Latents: the VAE Encode node's output normalised by hand with FLUX's shift and scale; text:
    the Text Encode node with the system prompt the official training gave the caption's kind."""
    from nextdit_nodes.files.fingerprint import fingerprint
    from nextdit_nodes.nodes.text import NextDiTTextEncode, NextDiTTextEncoderLoader
    from nextdit_nodes.nodes.vae import NextDiTVAEEncode, NextDiTVAELoader
    from nextdit_nodes.training.distributed import start
    from nextdit_nodes.training.feature_cache import FeatureCache
    from nextdit_nodes.training.lora_inputs import Encoders, InputSettings, prepare

    data = write_dataset(tmp_path / "data")
    gemma, jina, vae_path = (models / "text_encoders" / GEMMA, models / "text_encoders" / JINA,
                             models / "vae" / VAE)
    (text,) = NextDiTTextEncoderLoader().load(str(gemma), str(jina))
    vae, _ = NextDiTVAELoader().load(str(vae_path))
    cache = FeatureCache(tmp_path / "cache", fingerprint(vae_path), "tiny")
    job = start("cpu")
    prepared = prepare(data, InputSettings(64, Filters(16)), cache, Encoders(lambda: vae, lambda: text, job.device),
                       job, progress=False)
    assert [item.image.name for item in prepared.items] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    encode = NextDiTTextEncode()
    for index, choice in ((0, "plain (official)"), (2, "xml (official)")):
        item = prepared.items[index]
        (expected,) = encode.encode(text, item.caption, choice, "")
        (cached,) = prepared.conditionings([index], [False])
        assert torch.equal(cached[0][0], expected[0][0])
        assert torch.equal(cached[0][1]["pooled_output"], expected[0][1]["pooled_output"])
    (empty,) = prepared.conditionings([0], [True])
    (expected_empty,) = encode.encode(text, "", "none", "")
    assert torch.equal(empty[0][0], expected_empty[0][0])

    # img0 is 32x48 (aspect 2/3): the 48x80 bucket (aspect 0.6; 64x64 is farther), scaled up to
    # cover it and centre-cropped.
    item = prepared.items[0]
    width, height = item.bucket
    assert (width, height) == (48, 80)
    image = Image.open(item.image).convert("RGB")
    scale = max(width / image.width, height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    pixels = torch.from_numpy(np.asarray(image.crop((left, top, left + width, top + height)), np.float32) / 255)
    (raw,) = NextDiTVAEEncode().encode(vae, pixels[None])
    assert torch.allclose(prepared.latents([0])[0], (raw["samples"][0] - 0.1159) * 0.3611, atol=1e-6)


def test_resumed_training_ends_where_an_uninterrupted_run_ends(models, tmp_path):
    data = write_dataset(tmp_path / "data")
    whole, part = tmp_path / "whole.safetensors", tmp_path / "part.safetensors"
    common = ("--batch-size", "2", "--lr", "1e-2", "--cache-dir", str(tmp_path / "cache"))
    assert train_lora(models, data, whole, "--steps", "3", *common) == 0
    assert train_lora(models, data, part, "--steps", "3", "--save-every", "2", *common) == 0
    state = tmp_path / "part.training-state.pt"
    assert state.is_file() and (tmp_path / "part-step000002.safetensors").is_file()
    assert torch.load(state, weights_only=True)["step"] == 2
    part.unlink()
    assert train_lora(models, data, part, "--steps", "3", "--resume", *common) == 0
    a, b = load_file(str(whole)), load_file(str(part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from nextdit_nodes.commands.train_lora import TrainLoraUsageError

    with pytest.raises(TrainLoraUsageError, match="rank"):       # another rank cannot continue this state
        train_lora(models, data, part, "--steps", "3", "--resume", *common, "--rank", "8")


# ---- the pieces --------------------------------------------------------------------------------

def test_dataset_layouts(tmp_path):
    _image(tmp_path / "a.png", 20, 20, 0)
    _image(tmp_path / "b.png", 20, 20, 1)
    (tmp_path / "metadata.jsonl").write_text(
        '{"image": "a.png", "text": "first"}\n{"file_name": "b.png", "caption": "second"}\n'
        '{"image": "missing.png", "text": "x"}\nnot json\n{"image": "a.png", "text": "  "}\n')
    scan = scan_dataset(tmp_path)
    assert scan.layout == "metadata.jsonl"
    assert [(i.image.name, i.caption) for i in scan.items] == [("a.png", "first"), ("b.png", "second")]
    assert [s.reason.split(" (")[0] for s in scan.skipped] == [
        "listed in metadata.jsonl line 3 but the file does not exist", "line 4 is not JSON", "empty caption"]
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text('file_name,text\na.png,"one, with a comma"\n')
    assert [(i.image.name, i.caption) for i in scan_dataset(tmp_path).items] == [("a.png", "one, with a comma")]
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "a.xml").write_text("<general_tags></general_tags>")
    (tmp_path / "a.txt").write_text("plain")
    scan = scan_dataset(tmp_path)
    assert [(i.image.name, i.is_xml) for i in scan.items] == [("a.png", True)]          # .xml preferred
    assert [s.path.name for s in scan.skipped] == ["b.png"]                              # no caption


def test_filters_and_buckets():
    filters = Filters(min_side=512, min_aspect=0.5, max_aspect=2.0)
    assert filters.problem(1024, 1024) is None and filters.problem(512, 1024) is None
    assert "too small" in filters.problem(511, 1024)
    assert "aspect ratio 2.50" in filters.problem(1280, 512)
    sizes = bucket_sizes(1024)
    assert (1024, 1024) in sizes
    for width, height in sizes:
        assert width % 16 == 0 and height % 16 == 0
        assert 0.5 <= width / height <= 2.0
        assert 1024 * 1024 * 0.96 <= width * height <= 1024 * 1024   # about the same pixel count
    assert nearest_bucket(1920, 1080, sizes) == min(sizes, key=lambda s: abs(math.log(s[0] / s[1] * 1080 / 1920)))
    assert nearest_bucket(800, 800, sizes) == (1024, 1024)
    with pytest.raises(ValueError, match="multiple of 16"):
        bucket_sizes(1000)


def test_batch_order_is_deterministic_single_bucket_and_covers_every_image():
    buckets = [(64, 64)] * 5 + [(80, 48)] * 2
    order = BatchOrder(buckets, global_batch=2, seed=3)
    epoch = [order.batch(n) for n in range(order.per_epoch)]
    assert order.per_epoch == 3 + 1
    assert all(len({buckets[i] for i in batch}) == 1 and len(batch) == 2 for batch in epoch)
    assert {i for batch in epoch for i in batch} == set(range(7))
    assert epoch == [BatchOrder(buckets, 2, 3).batch(n) for n in range(order.per_epoch)]
    assert [order.batch(n) for n in range(4, 8)] != epoch            # a new shuffle each epoch


def test_training_times_follow_the_shifted_logit_normal():
    shift = math.exp(1.15)
    times = logit_normal_times(1000, shift, torch.Generator().manual_seed(0))
    u = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    sigma = 1 - torch.sigmoid(u)                                     # noise fraction
    expected = 1 - shift * sigma / (1 + (shift - 1) * sigma)         # FLUX / Lumina time shift on sigma
    assert torch.allclose(times, expected, atol=1e-6)
    assert torch.equal(logit_normal_times(5, 1.0, torch.Generator().manual_seed(1)),
                       torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(1))))


def test_tiny_newbie_params_match_the_model_files(models):
    assert load_dit(models / "diffusion_models" / DIT).params == tiny_newbie_params()


def test_a_plan_that_goes_over_a_small_dataset_too_often_is_warned_about():
    from nextdit_nodes.training.lora_training import overfitting_warning

    # The README recipe (2500 steps of 32 over 3000 images: 27 passes) is fine; the same batch for
    # 200 steps over 30 images (213 passes) is what spoiled the old prompts, and so did 300 steps of
    # 8 over 30 images (80 passes).
    assert overfitting_warning(3000, 2500, 32) is None
    warning = overfitting_warning(30, 200, 32)
    assert "213 times" in warning and "at most about 37" in warning
    assert "80 times" in overfitting_warning(30, 300, 8)
    assert "--prior-prompts" in overfitting_warning(30, 300, 8)          # the way out for few images
    with_prior = overfitting_warning(30, 300, 8, prior=True)            # prior images guard the old prompts
    assert "80 times" in with_prior and "--prior-prompts" not in with_prior and "copy" in with_prior
    assert overfitting_warning(30, 200, 1) is None        # 7 passes
