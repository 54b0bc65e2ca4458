"""Prior preservation in train-lora on tiny models: the base model's prior images are drawn once
(each the image the sampler draws for its prompt and seed) and reused from the cache, every
micro-batch holds --batch-size images of the data and --prior-batch prior images, and
--prior-weight 0 trains exactly the LoRA a run without prior images trains."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from nextdit_nodes.training.lora_training import LoraTraining
from PIL import Image
from runtime_models import DIT, GEMMA, JINA, VAE, write_tiny_models
from safetensors.torch import load_file
from test_lora_training import train_lora, write_dataset


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def _prior_folder(data, tmp_path):
    """A --prior-data folder: the dataset's usable images under other captions."""
    prior = tmp_path / "prior"
    prior.mkdir()
    for index in range(4):
        shutil.copy(data / f"img{index}.png", prior / f"p{index}.png")
        (prior / f"p{index}.txt").write_text(f"a scene the model knows {index}")
    return prior


def test_prior_images_are_the_base_models_images_drawn_once_then_reused(models, tmp_path, capsys, monkeypatch):
    from nextdit_nodes.dit.checkpoint import load_dit
    from nextdit_nodes.nodes.text import NextDiTTextEncode, NextDiTTextEncoderLoader
    from nextdit_nodes.nodes.vae import NextDiTVAEDecode, NextDiTVAELoader
    from nextdit_nodes.sampler_settings import SamplerSettings
    from nextdit_nodes.sampling import sample as sampling

    data = write_dataset(tmp_path / "data")
    prompts = tmp_path / "prior.txt"
    # The second prompt is XML over two lines, written with \n as a prompt file holds it.
    prompts.write_text("a blue square\n# a comment\n<character_1>\\n<n>circle</n>\\n</character_1>\n")
    common = ("--steps", "1", "--batch-size", "2", "--lr", "1e-2", "--prior-prompts", str(prompts),
              "--prior-images", "3", "--sample-steps", "2", "--sample-cfg", "3", "--seed", "5")
    assert train_lora(models, data, tmp_path / "a.safetensors", *common) == 0
    assert "prior: 3 images, 0 skipped; latents: 0 from the cache, 3 encoded" in capsys.readouterr().out
    (folder,) = (data / ".nextdit-cache" / "prior-images").iterdir()
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    texts = ["a blue square", "<character_1>\n<n>circle</n>\n</character_1>"]
    assert [line["text"] for line in lines] == [texts[0], texts[1], texts[0]]        # the prompts cycled

    # Image i is what NextDiT Sampler's code draws for prompt i % 2 with seed --seed + i (the tiny
    # model records no settings: --sample-steps Euler steps, CFG --sample-cfg on every step),
    # encoded by the Text Encode node ("auto" system prompt: the XML one for XML, the plain one
    # otherwise) and decoded by the VAE Decode node.
    (text,) = NextDiTTextEncoderLoader().load(str(models / "text_encoders" / GEMMA),
                                              str(models / "text_encoders" / JINA))
    vae, _ = NextDiTVAELoader().load(str(models / "vae" / VAE))
    model = load_dit(models / "diffusion_models" / DIT)
    encode = NextDiTTextEncode()
    (negative,) = encode.encode(text, "", "none", "")
    settings = SamplerSettings(steps=2, solver="euler", cfg=3.0, cfg_trunc=1.0)
    for index in range(3):
        prompt = texts[index % 2]
        (positive,) = encode.encode(text, prompt, "xml (official)" if prompt.startswith("<") else "plain (official)",
                                    "")
        latent = sampling.sample(model, positive, negative, settings, width=32, height=32, seed=5 + index)
        (image,) = NextDiTVAEDecode().decode(vae, latent)
        expected = (image[0].clamp(0, 1) * 255).round().byte().numpy()
        drawn = np.asarray(Image.open(folder / lines[index]["image"]))
        assert np.abs(drawn.astype(int) - expected.astype(int)).max() <= 1, index

    # A second run draws nothing: the images and their latents come from the cache.
    def no_sampling(*args, **kwargs):
        raise AssertionError("prior images drawn again")

    monkeypatch.setattr(sampling, "sample", no_sampling)
    assert train_lora(models, data, tmp_path / "b.safetensors", *common) == 0
    assert "prior: 3 images, 0 skipped; latents: 3 from the cache, 0 encoded" in capsys.readouterr().out
    assert list((data / ".nextdit-cache" / "prior-images").iterdir()) == [folder]
    settings_b = json.loads(load_file_metadata(tmp_path / "b.safetensors")["training_settings"])
    assert settings_b["prior_images"] == 3 and settings_b["prior_weight"] == 1.0


def load_file_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_every_micro_batch_holds_the_data_share_and_the_prior_share(models, tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    prior = _prior_folder(data, tmp_path)
    seen = []
    original = LoraTraining._inputs

    def recording(self, number, prior_share=False):
        inputs = original(self, number, prior_share)
        dataset = self.prior if prior_share else self.data
        captions = {dataset.items[i].caption for i in inputs[0]}
        assert torch.equal(inputs[1], dataset.latents(inputs[0]))      # the latents of that share's images
        seen.append((number, prior_share, len(inputs[0]), captions))
        return inputs

    monkeypatch.setattr(LoraTraining, "_inputs", recording)
    assert train_lora(models, data, tmp_path / "a.safetensors", "--steps", "2", "--batch-size", "2",
                      "--accumulation", "2", "--prior-data", str(prior), "--prior-batch", "3", "--lr", "1e-2") == 0
    # 2 steps × 2 micro-batches, each 2 images of the data and then 3 prior images.
    assert [(number, share, size) for number, share, size, _ in seen] == [
        (n, share, 3 if share else 2) for n in range(4) for share in (False, True)]
    for _, share, _, captions in seen:
        assert all(c.startswith("a scene the model knows") == share for c in captions)

    seen.clear()   # --prior-batch defaults to --batch-size
    assert train_lora(models, data, tmp_path / "b.safetensors", "--steps", "1", "--batch-size", "2",
                      "--prior-data", str(prior), "--lr", "1e-2", "--seed", "1") == 0
    assert [(share, size) for _, share, size, _ in seen] == [(False, 2), (True, 2)]


def test_prior_weight_0_trains_exactly_the_plain_lora_and_the_loss_adds_the_weighted_prior(models, tmp_path,
                                                                                         monkeypatch):
    data = write_dataset(tmp_path / "data")
    prior = _prior_folder(data, tmp_path)
    common = ("--steps", "3", "--batch-size", "2", "--lr", "1e-2", "--cache-dir", str(tmp_path / "cache"))
    outputs = {name: tmp_path / f"{name}.safetensors" for name in ("plain", "zero", "one")}
    assert train_lora(models, data, outputs["plain"], *common) == 0
    assert train_lora(models, data, outputs["zero"], *common, "--prior-data", str(prior), "--prior-weight", "0") == 0
    assert train_lora(models, data, outputs["one"], *common, "--prior-data", str(prior)) == 0
    plain, zero, one = (load_file(str(outputs[name])) for name in ("plain", "zero", "one"))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert any(not torch.equal(plain[k], one[k]) for k in plain if "lora_" in k)

    # The loss of a micro-batch: the data share's mean velocity error + weight × the prior share's,
    # each computed here by hand from the inputs the training draws.
    import nextdit_nodes.training.lora_training as module

    captured = {}

    class Capture(LoraTraining):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured["training"] = self

        def train_step(self):
            self.step = self.config.steps
            return 0.0

    monkeypatch.setattr(module, "LoraTraining", Capture)   # train-lora imports it when it runs
    assert train_lora(models, data, tmp_path / "c.safetensors", *common, "--prior-data", str(prior),
                      "--prior-weight", "0.25") == 0
    training = captured["training"]
    assert training.config.prior_weight == 0.25
    with torch.no_grad():
        shares = []
        for share in (False, True):
            _, latents, noise, t, text = training._inputs(0, share)
            x = t[:, None, None, None] * latents + (1 - t[:, None, None, None]) * noise
            velocity = training.model(x, t, text.feats, text.mask, text.pooled)
            shares.append(((velocity - (latents - noise)) ** 2).mean())
        assert torch.allclose(training._micro_batch(0), shares[0] + 0.25 * shares[1], atol=1e-6)


def test_embedded_prior_prompts_are_the_scenes_in_a_known_size_and_base_scenes_never_evaluated(tmp_path):
    import re

    from nextdit_nodes.commands import cli
    from nextdit_nodes.commands.arguments import read_prompts
    from nextdit_nodes.training.embedded.lora_demo import held_out_concept_scenes
    from nextdit_nodes.training.embedded.shapes import held_out_scenes, xml_caption

    prompts_file = tmp_path / "prior.txt"
    assert cli.main(["embedded-lora-data", str(tmp_path / "data"), "--count", "6", "--prior-prompts",
                     str(prompts_file), "--prior-count", "20"]) == 0
    captions = [json.loads(line)["text"] for line in (tmp_path / "data" / "metadata.jsonl").read_text().splitlines()]
    prompts = read_prompts(prompts_file)
    assert len(prompts) == 6 + 20 and not any("tiny" in p for p in prompts)
    assert any("tiny" in c for c in captions)
    sizes = re.compile(r"\b(tiny|small|large)\b")
    for caption, prompt in zip(captions, prompts):       # the same scene, a known size where it was tiny
        assert sizes.sub("SIZE", caption) == sizes.sub("SIZE", prompt)
        assert sizes.findall(prompt) == ["small" if s == "tiny" else s for s in sizes.findall(caption)]
    # Multi-line XML prompts come back with their line breaks, and none is an evaluation prompt.
    assert any(p.startswith("<character_1>\n<n>") for p in prompts[6:])
    evaluated = {xml_caption(s) for s in held_out_scenes(200) + held_out_concept_scenes(200)}
    assert not evaluated & set(prompts)


def test_a_run_with_prior_images_resumes_exactly_and_only_with_them(models, tmp_path):
    from nextdit_nodes.commands.train_lora import TrainLoraUsageError

    data = write_dataset(tmp_path / "data")
    prior = _prior_folder(data, tmp_path)
    common = ("--batch-size", "2", "--lr", "1e-2", "--cache-dir", str(tmp_path / "cache"), "--prior-data", str(prior))
    whole, part = tmp_path / "whole.safetensors", tmp_path / "part.safetensors"
    assert train_lora(models, data, whole, "--steps", "3", *common) == 0
    assert train_lora(models, data, part, "--steps", "3", "--save-every", "2", *common) == 0
    part.unlink()
    with pytest.raises(TrainLoraUsageError, match="4 prior images and this run has 0"):
        train_lora(models, data, part, "--steps", "3", "--resume", *common[:-2])
    assert train_lora(models, data, part, "--steps", "3", "--resume", *common) == 0
    a, b = load_file(str(whole)), load_file(str(part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_embedded_data_share_1_makes_every_object_tiny_and_a_share_outside_0_1_is_refused(tmp_path, capsys):
    import re

    from nextdit_nodes.commands import cli

    assert cli.main(["embedded-lora-data", str(tmp_path / "data"), "--count", "8", "--share", "1"]) == 0
    captions = [json.loads(line)["text"] for line in (tmp_path / "data" / "metadata.jsonl").read_text().splitlines()]
    sizes = [re.findall(r"\b(tiny|small|large)\b", caption) for caption in captions]
    assert all(found and set(found) == {"tiny"} for found in sizes), sizes
    for bad in ("0", "1.5", "nan"):
        assert cli.main(["embedded-lora-data", str(tmp_path / f"bad{bad}"), "--count", "2", "--share", bad]) != 0
        assert "--share" in capsys.readouterr().err and not (tmp_path / f"bad{bad}").exists()
