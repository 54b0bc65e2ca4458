"""``python -m nextdit_nodes distill-decoder DATA --vae FILE --output FILE``: distill a tiny decoder (the
TAEF1 architecture, diffusers ``AutoencoderTiny``) from an autoencoder on a folder of images.

DATA is a folder of images (captions are not needed), or a dataset with a metadata.jsonl / metadata.csv
as train-lora reads it. Every image is resized and centre-cropped to --resolution; images that cannot
be read or are smaller are listed and skipped. The autoencoder encodes each image once; the tiny
decoder learns to reproduce the autoencoder's decode of that latent (L1 on both average-pooled
--pool×, plus --gan-weight times a patch-discriminator term, from step --gan-start on; with --gan-lr the
decoder's optimizer restarts at that rate when the term joins).

--latents FOLDER adds latents to learn from: ComfyUI Save Latent files (``*.latent``), e.g. of the
model's own samples, each centre-cropped to --resolution / 8 latent pixels, with the autoencoder's
decode of it as the target. The tiny decoder then also sees the latents a sampler makes, not only
the encoder's (DATA may then be left out).

The output is a decoder-only .safetensors (``decoder.layers.N`` names, the autoencoder's latent scale
and shift in its metadata) that NextDiT VAE Loader and the pack's VAE loader read: it decodes, and
refuses to encode (keep the full autoencoder for VAE Encode).

Under ``torchrun --nproc_per_node N`` the same command trains with N processes: --batch-size is per
process, gradients are averaged, only the first process writes files and shows progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from ..files.atomic import clean_leftovers
from ..runtime.errors import EXIT_BAD_WORKFLOW, RunnerError
from ..runtime.model_sources import resolve_model
from .arguments import UsageError

log = logging.getLogger(__name__)


class DistillDecoderUsageError(UsageError):
    """A bad combination of distill-decoder options."""


class DistillDecoderError(RunnerError):
    """An input that cannot be used: not an autoencoder, no usable images, a value out of range."""

    exit_code = EXIT_BAD_WORKFLOW


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill-decoder", help="distill a tiny decoder (TAEF1 architecture) from an autoencoder",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="?", default=None,
                        help="folder of images (optional with --latents)")
    parser.add_argument("--latents", type=Path, default=None, metavar="FOLDER",
                        help="also train on these latents: ComfyUI Save Latent files (*.latent), e.g. of the "
                             "model's own samples, each centre-cropped to --resolution / 8 latent pixels")
    parser.add_argument("--vae", required=True,
                        help="the autoencoder with its encoder (ae.safetensors, a diffusers vae/ folder; models/vae)")
    parser.add_argument("--output", type=Path, required=True, help="the tiny decoder to write (.safetensors)")
    parser.add_argument("--resolution", type=int, default=256, help="training crop, pixels per side (default 256)")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per process per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--pool", type=int, default=8,
                        help="average-pooling factor of the L1 loss (default 8, SDXS's; 1: full-resolution L1)")
    parser.add_argument("--gan-weight", type=float, default=0.0,
                        help="weight of the patch-discriminator term (default 0: off)")
    parser.add_argument("--gan-start", type=int, default=0,
                        help="steps of L1 alone before the GAN term joins (default 0: from the start)")
    parser.add_argument("--gan-lr", type=float, default=None,
                        help="with --gan-start: the decoder's optimizer restarts at this rate when the GAN term "
                             "joins, and the discriminator trains at it (default: --lr)")
    parser.add_argument("--width", type=int, default=64, help="channels of every decoder stage (default 64, TAEF1's)")
    parser.add_argument("--blocks", default="3,3,3,1",
                        help="blocks per stage, comma-separated (default 3,3,3,1, TAEF1's; the stage count must "
                             "match the autoencoder's downscale: 4 stages for 8×)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=0,
                        help="also write <output>-stepNNNNNN.safetensors and the training state every N steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output stem>.training-state.pt (written with --save-every)")
    parser.add_argument("--save-dtype", choices=("fp16", "fp32"), default="fp16",
                        help="dtype of the tensors in the file (default fp16, as TAEF1 ships)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when there is one (under torchrun each process takes GPU LOCAL_RANK)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


# (smallest, largest) of every numeric option, checked before anything loads (an optional one when given).
NUMERIC_RANGES = {"resolution": (8, 16384), "steps": (1, 10**9), "batch_size": (1, 4096), "lr": (1e-12, 1e3),
                  "pool": (1, 1024), "gan_weight": (0.0, 1e6), "width": (1, 4096), "seed": (0, 2**63 - 1),
                  "save_every": (0, 10**9), "gan_start": (0, 10**9), "gan_lr": (1e-12, 1e3)}


def _config(args):
    from ..training.tiny_decoder import TinyDecoderConfig

    for name, (low, high) in NUMERIC_RANGES.items():
        value = getattr(args, name)
        if value is None:
            continue
        if not math.isfinite(value) or not low <= value <= high:
            raise DistillDecoderError(f"--{name.replace('_', '-')} {value}: must be a number from {low} to {high}")
    try:
        blocks = tuple(int(part) for part in args.blocks.split(","))
    except ValueError:
        raise DistillDecoderError(f"--blocks {args.blocks!r}: expected whole numbers separated by commas") from None
    if (args.gan_start or args.gan_lr is not None) and not args.gan_weight:
        raise DistillDecoderError("--gan-start and --gan-lr need a GAN term: give --gan-weight too (e.g. 0.01)")
    if args.resolution % args.pool:
        raise DistillDecoderError(f"--resolution {args.resolution} is not a multiple of --pool {args.pool}")
    try:
        return TinyDecoderConfig(width=args.width, blocks=blocks, steps=args.steps, batch_size=args.batch_size,
                                 lr=args.lr, pool=args.pool, gan_weight=args.gan_weight, gan_start=args.gan_start,
                                 gan_lr=args.gan_lr, seed=args.seed)
    except ValueError as error:
        raise DistillDecoderError(str(error)) from None


def load_teacher(path: Path, device):
    """The autoencoder, refused clearly when it is not one or cannot encode."""
    from ..files.errors import WeightsError
    from ..vae.loading import load_vae

    try:
        vae = load_vae(path, device=device, dtype="fp32")
    except WeightsError as error:
        raise DistillDecoderError(f"--vae {error}") from None
    if vae.kind != "flux" or not vae.info.can_encode:
        raise DistillDecoderError(f"--vae {path}: a {'tiny decoder' if vae.kind == 'tiny' else 'decoder-only file'}; "
                                  f"distill-decoder needs the full autoencoder with its encoder (e.g. FLUX's "
                                  f"ae.safetensors)")
    return vae


def run(args) -> int:
    import torch

    from ..training import distributed
    from ..training.lora_training import run as train
    from ..training.lora_training import save_training_state
    from ..training.tiny_decoder import TinyDecoderTraining, save_tiny_decoder

    config = _config(args)
    if args.data is None and args.latents is None:
        raise DistillDecoderUsageError("give a folder of images (DATA), a folder of latents (--latents), or both")
    for what, folder in (("dataset folder", args.data), ("--latents folder", args.latents)):
        if folder is not None and not folder.is_dir():
            raise DistillDecoderUsageError(f"{what} {folder} does not exist")
    clean_leftovers(args.output.parent, recursive=False)   # what a killed run left half written
    output = args.output if args.output.suffix == ".safetensors" else args.output.with_suffix(".safetensors")
    state_path = output.with_name(f"{output.stem}.training-state.pt")
    if output.exists() and not (args.overwrite or args.resume):
        raise DistillDecoderUsageError(f"{output} exists; choose another --output, pass --overwrite, or --resume")
    if args.resume and not state_path.is_file():
        raise DistillDecoderUsageError(f"--resume needs {state_path} (written by --save-every)")
    vae_path = resolve_model("vae", args.vae)

    job = distributed.start(args.device)
    try:
        vae = load_teacher(vae_path, job.device)
        if len(config.blocks) - 1 != int(math.log2(vae.info.downscale)):
            raise DistillDecoderError(f"--blocks {args.blocks}: {len(config.blocks)} stages upsample "
                                      f"{config.downscale}×, the autoencoder {vae.info.downscale}×; give "
                                      f"{int(math.log2(vae.info.downscale)) + 1} stages")
        if args.resolution % vae.info.downscale:
            raise DistillDecoderError(f"--resolution {args.resolution} is not a multiple of the autoencoder's "
                                      f"factor {vae.info.downscale}")
        data, images_used, latents_used = _training_data(args, vae, job)
        config = _with_channels(config, vae.info.latent_channels)
        training = TinyDecoderTraining(data, config, job)
        if args.resume:
            try:
                training.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
            except ValueError as error:
                raise DistillDecoderUsageError(f"{state_path}: {error}") from None
            log.info("resumed at step %d of %d", training.step, config.steps)
        save_dtype = torch.float16 if args.save_dtype == "fp16" else torch.float32
        metadata = {"trainer": "nextdit-nodes distill-decoder", "teacher_vae": vae_path.name,
                    "training_settings": json.dumps({**_settings(config), "resolution": args.resolution,
                                                     "images": images_used, "latents": latents_used,
                                                     "processes": job.world_size})}

        def checkpoint(step: int) -> None:
            if args.save_every and step % args.save_every == 0 and step < config.steps:
                save_tiny_decoder(output.with_name(f"{output.stem}-step{step:06d}.safetensors"), training.model,
                                  vae.latent_format, {**metadata, "steps_done": str(step)}, save_dtype)
                save_training_state(training, state_path)

        train(training, progress=not args.no_progress, every=args.save_every, on_every=checkpoint)
        if job.is_main:
            save_tiny_decoder(output, training.model, vae.latent_format,
                              {**metadata, "steps_done": str(training.step)}, save_dtype)
            print(f"wrote {output} (tiny decoder, width {config.width}, blocks {list(config.blocks)}, "
                  f"{training.step} steps, last pooled L1 {training.last.get('l1', float('nan')):.4f})")
    finally:
        distributed.finish(job)
    return 0


def _training_data(args, vae, job):
    """The autoencoder's latents and decodes of DATA's images and of the --latents files, with the
    number of images and latents used; what is skipped is listed with the reason."""
    from ..training.decoder_data import autoencoder_targets, joined, latent_targets, load_images, load_latents
    from ..training.lora_data import DatasetError

    images, skipped = None, []
    if args.data is not None:
        try:
            images, _, skipped = load_images(args.data, args.resolution)
        except DatasetError as error:
            raise DistillDecoderError(str(error)) from None
    latents = None
    if args.latents is not None:
        latents, _, skipped_latents = load_latents(args.latents, vae.info.latent_channels,
                                                   args.resolution // vae.info.downscale)
        skipped += skipped_latents
    image_count = 0 if images is None else len(images)
    latent_count = 0 if latents is None else len(latents)
    if job.is_main:
        for entry in skipped:
            print(f"skipped {entry}")
        found = [f"{image_count} images"] if args.data is not None else []
        found += [f"{latent_count} latents"] if args.latents is not None else []
        print(f"{' and '.join(found)} train, {len(skipped)} skipped")
    if not image_count + latent_count:
        where = " or ".join(str(folder) for folder in (args.data, args.latents) if folder is not None)
        raise DistillDecoderError(f"no usable images or latents in {where} (images of at least {args.resolution} "
                                  f"px per side, latents of at least {args.resolution // vae.info.downscale} "
                                  f"latent pixels with the autoencoder's {vae.info.latent_channels} channels; "
                                  f"see the skipped files above)")
    data = joined(autoencoder_targets(vae, images) if image_count else None,
                  latent_targets(vae, latents) if latent_count else None)
    return data, image_count, latent_count


def _with_channels(config, channels: int):
    from dataclasses import replace

    return replace(config, latent_channels=channels)


def _settings(config) -> dict:
    from dataclasses import asdict

    return {**asdict(config), "blocks": list(config.blocks)}
