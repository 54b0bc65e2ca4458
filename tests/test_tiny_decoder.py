"""``distill-decoder``: a tiny decoder (diffusers AutoencoderTiny) distilled from a tiny random
autoencoder, written as a file the pack's VAE loader reads; its loss, resume and torchrun."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from nextdit_nodes.commands.cli import main
from nextdit_nodes.runtime.errors import EXIT_BAD_WORKFLOW
from nextdit_nodes.training.distributed import Distributed
from nextdit_nodes.training.tiny_decoder import DecoderData, TinyDecoderConfig, TinyDecoderTraining, pooled_l1
from nextdit_nodes.vae.loading import load_vae
from PIL import Image
from safetensors.torch import load_file, save_file

ONE_PROCESS = Distributed(0, 1, 0, torch.device("cpu"))
SHAPE = ("--resolution", "32", "--width", "8", "--blocks", "1,1,1,1", "--no-progress", "--save-dtype", "fp32")
COMMON = (*SHAPE, "--batch-size", "2")


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A diffusers AutoencoderKL folder: 8× down, 4 latent channels, its own latent scale and shift."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.5, shift_factor=0.1)
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae"
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six smooth 40×36 images, one corrupt file and one too small for --resolution 32."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(6):
        small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        Image.fromarray(small).resize((40, 36), Image.Resampling.BILINEAR).save(folder / f"image{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "small.png")
    return folder


def test_pooled_l1_is_the_mean_absolute_difference_of_8x8_block_means():
    g = torch.Generator().manual_seed(0)
    output, target = torch.randn(2, 3, 16, 24, generator=g), torch.randn(2, 3, 16, 24, generator=g)
    total, count = 0.0, 0
    for b in range(2):
        for c in range(3):
            for i in range(0, 16, 8):
                for j in range(0, 24, 8):
                    mean_out = sum(output[b, c, i + y, j + x].item() for y in range(8) for x in range(8)) / 64
                    mean_target = sum(target[b, c, i + y, j + x].item() for y in range(8) for x in range(8)) / 64
                    total += abs(mean_out - mean_target)
                    count += 1
    assert pooled_l1(output, target, 8).item() == pytest.approx(total / count, rel=1e-5)


def test_training_lowers_the_pooled_loss():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(8, 4, 2, 2, generator=g)
    # A target the decoder can learn: each latent's first three channels, upsampled.
    targets = ((torch.nn.functional.interpolate(latents[:, :3].tanh(), scale_factor=8) + 1) * 127.5).round().byte()
    config = TinyDecoderConfig(latent_channels=4, width=8, blocks=(1, 1, 1, 1), steps=40, batch_size=4, lr=3e-3)
    training = TinyDecoderTraining(DecoderData(latents, targets), config, ONE_PROCESS)
    first = training.train_step()
    for _ in range(39):
        last = training.train_step()
    assert last < 0.6 * first


def test_gan_term_trains_the_discriminator_too():
    g = torch.Generator().manual_seed(2)
    data = DecoderData(torch.randn(4, 4, 2, 2, generator=g), torch.randint(0, 256, (4, 3, 16, 16), generator=g,
                                                                            dtype=torch.uint8))
    config = TinyDecoderConfig(latent_channels=4, width=8, blocks=(1, 1, 1, 1), batch_size=2, gan_weight=0.1)
    training = TinyDecoderTraining(data, config, ONE_PROCESS)
    before = {k: v.clone() for k, v in training.discriminator.state_dict().items()}
    training.train_step()
    assert any(not torch.equal(before[k], v) for k, v in training.discriminator.state_dict().items())


def test_gan_start_trains_the_l1_alone_first_then_restarts_at_gan_lr():
    """Before gan_start the decoder follows an L1-only run bit for bit and the discriminator does not
    move; at gan_start the decoder's optimizer is a fresh one at gan_lr and the discriminator trains."""
    g = torch.Generator().manual_seed(3)
    data = DecoderData(torch.randn(4, 4, 2, 2, generator=g), torch.randint(0, 256, (4, 3, 16, 16), generator=g,
                                                                            dtype=torch.uint8))
    base = TinyDecoderConfig(latent_channels=4, width=8, blocks=(1, 1, 1, 1), batch_size=2)
    l1_only = TinyDecoderTraining(data, base, ONE_PROCESS)
    late = TinyDecoderTraining(data, replace(base, gan_weight=0.1, gan_start=2, gan_lr=3e-4), ONE_PROCESS)
    discriminator = {k: v.clone() for k, v in late.discriminator.state_dict().items()}
    for _ in range(2):
        assert l1_only.train_step() == late.train_step()
    assert all(torch.equal(a, b) for a, b in zip(l1_only.model.state_dict().values(), late.model.state_dict().values()))
    assert all(torch.equal(discriminator[k], v) for k, v in late.discriminator.state_dict().items())
    late.train_step()
    assert [group["lr"] for group in late.optimizer.param_groups] == [3e-4]
    assert all(state["step"] == 1 for state in late.optimizer.state.values())      # fresh moments
    assert any(not torch.equal(discriminator[k], v) for k, v in late.discriminator.state_dict().items())


def test_distill_decoder_writes_a_tiny_decoder_the_vae_loader_reads(autoencoder, images, tmp_path, capsys):
    output = tmp_path / "tiny.safetensors"
    assert main(["distill-decoder", str(images), "--vae", str(autoencoder), "--output", str(output),
                 "--steps", "3", *COMMON]) == 0
    printed = capsys.readouterr().out
    assert "broken.png" in printed and "small.png: too small" in printed
    assert "6 images train, 2 skipped" in printed

    tiny, full = load_vae(output, dtype="fp32"), load_vae(autoencoder, dtype="fp32")
    assert (tiny.kind, tiny.info.latent_channels, tiny.info.downscale) == ("tiny", 4, 8)
    assert tiny.latent_format == full.latent_format   # scale 0.5, shift 0.1 from the autoencoder
    raw = torch.randn(2, 4, 3, 5)
    assert tiny.decode(raw).shape == (2, 24, 40, 3)
    # It is the AutoencoderTiny decoder on the normalised latent, as the file's tensors say.
    from diffusers import AutoencoderTiny

    reference = AutoencoderTiny(latent_channels=4, decoder_block_out_channels=(8,) * 4, num_decoder_blocks=(1,) * 4)
    reference.load_state_dict(load_file(str(output)), strict=False)
    with torch.no_grad():
        expected = ((reference.decoder((raw - 0.1) * 0.5) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(tiny.decode(raw), expected, atol=1e-5)
    with pytest.raises(ValueError, match="no encoder"):
        tiny.encode(torch.rand(1, 32, 32, 3))


def test_the_nodes_load_and_decode_with_it_and_refuse_to_encode(autoencoder, images, tmp_path, monkeypatch):
    from nextdit_nodes.nodes.vae import NextDiTVAEDecode, NextDiTVAEEncode, NextDiTVAELoader

    (tmp_path / "vae").mkdir()
    assert main(["distill-decoder", str(images), "--vae", str(autoencoder), "--steps", "1",
                 "--output", str(tmp_path / "vae" / "tiny.safetensors"), *COMMON]) == 0
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tmp_path))
    assert "tiny.safetensors" in NextDiTVAELoader.INPUT_TYPES()["required"]["vae_name"][0]
    vae, core_vae = NextDiTVAELoader().load("tiny.safetensors")
    assert core_vae is None                  # headless: no core VAE
    (image,) = NextDiTVAEDecode().decode(vae, {"samples": torch.randn(1, 4, 4, 4)}, tiled="off")
    assert image.shape == (1, 32, 32, 3) and 0 <= image.min() and image.max() <= 1
    with pytest.raises(Exception, match="no encoder"):
        NextDiTVAEEncode().encode(vae, image)


@pytest.mark.parametrize("late_gan", [(), ("--gan-start", "2", "--gan-lr", "0.005"), ("--gan-start", "1", "--gan-lr", "0.005")],
                         ids=["gan-from-start", "gan-joins-at-the-resumed-step", "gan-joined-before-the-save"])
def test_resume_continues_exactly(autoencoder, images, tmp_path, late_gan):
    output = tmp_path / "tiny.safetensors"
    args = ["distill-decoder", str(images), "--vae", str(autoencoder), "--output", str(output), "--steps", "4",
            "--save-every", "2", "--gan-weight", "0.1", *late_gan, *COMMON]
    assert main(args) == 0
    straight = tmp_path / "straight.safetensors"
    shutil.copy(output, straight)
    assert (tmp_path / "tiny-step000002.safetensors").is_file()
    assert main([*args, "--resume"]) == 0
    a, b = load_file(str(straight)), load_file(str(output))
    assert all(torch.equal(a[k], b[k]) for k in a)
    step2 = load_file(str(tmp_path / "tiny-step000002.safetensors"))
    assert any(not torch.equal(a[k], step2[k]) for k in a)   # the resumed steps did something


def test_two_processes_equal_one_process_with_the_combined_batch(autoencoder, images, tmp_path):
    from test_distributed_training import assert_same, torchrun

    common = ["distill-decoder", str(images), "--vae", str(autoencoder), "--steps", "2", "--lr", "0.01",
              "--gan-weight", "0.1",
              "--device", "cpu", *SHAPE]
    single = tmp_path / "single" / "tiny.safetensors"
    assert main([*common, "--batch-size", "4", "--output", str(single)]) == 0
    out = tmp_path / "ddp"
    torchrun(*common, "--batch-size", "2", "--output", str(out / "tiny.safetensors"))
    assert sorted(p.name for p in out.iterdir()) == ["tiny.safetensors"]
    initial = TinyDecoderConfig(latent_channels=4, width=8, blocks=(1, 1, 1, 1))
    from nextdit_nodes.training.tiny_decoder import build_tiny_decoder

    start = {f"decoder.{k}": v for k, v in build_tiny_decoder(initial).decoder.state_dict().items()}
    assert_same(out / "tiny.safetensors", single, changed_from=start, tolerance=1e-5)


def test_bad_inputs_are_refused_clearly(autoencoder, images, tmp_path, capsys):
    not_a_vae = tmp_path / "lora.safetensors"
    save_file({"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.zeros(4, 8)}, str(not_a_vae))
    output = tmp_path / "tiny.safetensors"
    base = ["distill-decoder", str(images), "--output", str(output), "--steps", "1", *COMMON]
    assert main([*base, "--vae", str(not_a_vae)]) == EXIT_BAD_WORKFLOW
    assert "not a VAE" in capsys.readouterr().err

    assert main([*base, "--vae", str(autoencoder)]) == 0
    assert main([*base, "--vae", str(output), "--output", str(tmp_path / "again.safetensors")]) == EXIT_BAD_WORKFLOW
    assert "needs the full autoencoder with its encoder" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["distill-decoder", str(empty), "--vae", str(autoencoder), "--output", str(tmp_path / "e.safetensors"),
                 *COMMON]) == EXIT_BAD_WORKFLOW
    assert "no usable images" in capsys.readouterr().err
    assert main([*base, "--vae", str(autoencoder), "--gan-start", "5", "--overwrite"]) == EXIT_BAD_WORKFLOW
    assert "need a GAN term: give --gan-weight" in capsys.readouterr().err
    assert main([*base, "--vae", str(autoencoder), "--blocks", "1,1,1", "--overwrite"]) == EXIT_BAD_WORKFLOW
    assert "give 4 stages" in capsys.readouterr().err


def _save_latent(path, latent, versioned=True):
    """A file as ComfyUI's Save Latent writes it (``latent_format_version_0`` marks the current format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"latent_tensor": latent.contiguous()}
    if versioned:
        tensors["latent_format_version_0"] = torch.tensor([])
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def latent_files(tmp_path_factory):
    """Four usable latents in three files (a batch of two, a larger one to crop, a pre-version-0 one) and
    four files that cannot be used."""
    folder = tmp_path_factory.mktemp("latents")
    gen = torch.Generator().manual_seed(1)
    usable = {"batch_00001_.latent": torch.randn(2, 4, 4, 4, generator=gen),
              "sub/large_00002_.latent": torch.randn(1, 4, 7, 5, generator=gen),
              "legacy.latent": torch.randn(1, 4, 4, 4, generator=gen)}
    for name, latent in usable.items():
        _save_latent(folder / name, latent, versioned=name != "legacy.latent")
    _save_latent(folder / "other_model.latent", torch.randn(1, 3, 4, 4, generator=gen))
    _save_latent(folder / "small.latent", torch.randn(1, 4, 3, 8, generator=gen))
    _save_latent(folder / "nan.latent", torch.full((1, 4, 4, 4), float("nan")))
    (folder / "broken.latent").write_bytes(b"not a safetensors file")
    return folder, usable


def test_latent_files_are_read_as_comfyui_load_latent_reads_them_and_cropped(latent_files):
    from nextdit_nodes.training.decoder_data import load_latents

    folder, usable = latent_files
    latents, used, skipped = load_latents(folder, channels=4, size=4)
    large = usable["sub/large_00002_.latent"]
    expected = torch.cat([usable["batch_00001_.latent"], usable["legacy.latent"] / 0.18215,
                          large[:, :, 1:5, 0:4]])                # sorted paths; centre crop of 7x5 to 4x4
    assert [p.name for p in used] == ["batch_00001_.latent", "legacy.latent", "large_00002_.latent"]
    assert torch.allclose(latents, expected)
    reasons = {entry.path.name: entry.reason for entry in skipped}
    assert sorted(reasons) == ["broken.latent", "nan.latent", "other_model.latent", "small.latent"]
    assert "3 latent channels; the autoencoder has 4" in reasons["other_model.latent"]
    assert "too small: 8x3" in reasons["small.latent"]
    assert "not finite" in reasons["nan.latent"]
    assert "cannot be read" in reasons["broken.latent"]


def test_latent_targets_are_the_autoencoders_decodes_of_the_latents(autoencoder):
    from nextdit_nodes.training.decoder_data import latent_targets

    full = load_vae(autoencoder, dtype="fp32")
    raw = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    data = latent_targets(full, raw, batch=2)
    assert torch.allclose(data.latents, (raw - 0.1) * 0.5)   # the autoencoder's shift 0.1 and scale 0.5
    with torch.no_grad():
        pixels = ((full.model.decode(raw).sample + 1) / 2).clamp(0, 1)   # diffusers' own decode
    assert (data.targets.float() - (pixels * 255).round()).abs().max() <= 1


def test_distill_decoder_trains_on_latents_alone_or_beside_images(autoencoder, images, latent_files, tmp_path,
                                                                  capsys):
    folder, _ = latent_files
    output = tmp_path / "from-latents.safetensors"
    assert main(["distill-decoder", "--latents", str(folder), "--vae", str(autoencoder), "--output", str(output),
                 "--steps", "2", *COMMON]) == 0
    printed = capsys.readouterr().out
    assert "4 latents train, 4 skipped" in printed and "other_model.latent: 3 latent channels" in printed
    from safetensors import safe_open

    with safe_open(str(output), "pt") as handle:
        settings = json.loads(handle.metadata()["training_settings"])
    assert (settings["images"], settings["latents"]) == (0, 4)
    assert load_vae(output, dtype="fp32").kind == "tiny"

    assert main(["distill-decoder", str(images), "--latents", str(folder), "--vae", str(autoencoder),
                 "--output", str(tmp_path / "both.safetensors"), "--steps", "1", *COMMON]) == 0
    assert "6 images and 4 latents train, 6 skipped" in capsys.readouterr().out

    assert main(["distill-decoder", "--vae", str(autoencoder), "--output", str(tmp_path / "x.safetensors"),
                 *COMMON]) == 2
    assert "give a folder of images (DATA), a folder of latents (--latents), or both" in capsys.readouterr().err
    unusable = tmp_path / "unusable"
    _save_latent(unusable / "other.latent", torch.randn(1, 16, 4, 4))
    assert main(["distill-decoder", "--latents", str(unusable), "--vae", str(autoencoder),
                 "--output", str(tmp_path / "y.safetensors"), *COMMON]) == EXIT_BAD_WORKFLOW
    assert "no usable images or latents" in capsys.readouterr().err
