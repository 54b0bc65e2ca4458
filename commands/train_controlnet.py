"""``python -m nextdit_nodes train-controlnet DATA --dit MODEL --gemma G --jina J --vae V --output FILE``:
train a ControlNet for the Next-DiT on captioned images with control images.

DATA is a dataset as train-lora reads it (images with same-stem .txt/.xml captions, or
metadata.jsonl / metadata.csv). The control image of NAME.png is NAME.control.png beside it (any
image suffix); or pass --control canny to make every control image from its image with Canny edges.
Images without a usable control image, unreadable, too small or of an unusual aspect ratio are
skipped and listed. Latents, control latents and text features are computed once into --cache-dir.

The DiT stays frozen; the control network (--blocks control blocks, started from the DiT's first
joint layers, output projections at zero) is trained with the DiT's own flow-matching loss. The
output is one .safetensors ControlNet (the layout controlnet/model.py documents) that NextDiT
ControlNet Loader reads, with the base model's fingerprint, the control kind and the training
settings in its metadata.

Under ``torchrun --nproc_per_node N`` the same command trains one ControlNet with N processes, as
train-lora does: --batch-size is per process and only the first process writes files.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..runtime.model_sources import resolve_model
from .arguments import UsageError, add_dataset_and_models
from .train_lora import check_numbers, checked_paths, resume

log = logging.getLogger(__name__)


class TrainControlNetUsageError(UsageError):
    """A bad combination of train-controlnet options or an unusable dataset."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-controlnet", help="train a ControlNet on captioned images with control images",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_and_models(parser, "the ControlNet file to write (.safetensors)")
    data = parser.add_argument_group("data")
    data.add_argument("--control", default=None, choices=("canny",),
                      help="make the control images from the images (default: NAME.control.png beside NAME.png)")
    data.add_argument("--control-kind", default=None,
                      help="what the control images are, recorded in the file (default: the --control "
                           "value, else 'image')")
    data.add_argument("--resolution", type=int, default=1024,
                      help="bucket pixel count = resolution² (a multiple of 16; default 1024)")
    data.add_argument("--center-crop", action="store_true", help="centre-crop every image to resolution²")
    data.add_argument("--min-side", type=int, default=None,
                      help="skip images whose shorter side is below this (default: resolution / 2)")
    data.add_argument("--aspect-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    data.add_argument("--system-prompt", default="auto", help="Gemma's system prompt (as train-lora)")
    data.add_argument("--caption-dropout", type=float, default=0.1)
    data.add_argument("--cache-dir", type=Path, default=None,
                      help="where latents and text features are kept (default DATA/.nextdit-cache)")
    train = parser.add_argument_group("training")
    train.add_argument("--blocks", type=int, default=2, help="control blocks (default 2)")
    train.add_argument("--init", default="dit", metavar="dit|random|FILE",
                       help="control blocks start as copies of the DiT's first joint layers (dit, default), "
                            "random, or as the ControlNet FILE (.safetensors) to fine-tune (--blocks then "
                            "comes from the file)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--batch-size", type=int, default=1, help="images per process and micro-batch")
    train.add_argument("--accumulation", type=int, default=1)
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--warmup", type=int, default=0)
    train.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    train.add_argument("--time-shift", type=float, default=None,
                       help="shift of the training times towards noise (default the official e^1.15)")
    train.add_argument("--grad-clip", type=float, default=1.0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-checkpointing", action="store_true", help="keep all activations for backward")
    out = parser.add_argument_group("checkpoints, devices")
    out.add_argument("--save-every", type=int, default=0,
                     help="also write <output>-stepNNNNNN.safetensors and the training state every N steps")
    out.add_argument("--resume", action="store_true",
                     help="continue from <output stem>.training-state.pt (written with --save-every)")
    out.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    out.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    out.add_argument("--save-dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _configs(args):
    from ..training.buckets import bucket_sizes
    from ..training.controlnet_training import ControlNetTrainingConfig
    from ..training.flow import OFFICIAL_TIME_SHIFT
    from ..training.lora_data import Filters
    from ..training.lora_inputs import InputSettings

    try:
        min_side = args.min_side if args.min_side is not None else args.resolution // 2
        settings = InputSettings(args.resolution, Filters(min_side, *args.aspect_range), args.center_crop,
                                 args.system_prompt)
        config = ControlNetTrainingConfig(
            blocks=args.blocks, init=args.init, steps=args.steps, batch_size=args.batch_size,
            accumulation=args.accumulation, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
            schedule=args.schedule, optimizer=args.optimizer, caption_dropout=args.caption_dropout,
            time_shift=OFFICIAL_TIME_SHIFT if args.time_shift is None else args.time_shift,
            grad_clip=args.grad_clip, checkpointing=not args.no_checkpointing, seed=args.seed)
        bucket_sizes(args.resolution, *args.aspect_range)
    except ValueError as error:
        raise TrainControlNetUsageError(str(error)) from None
    return settings, config


def run(args) -> int:
    import dataclasses

    from .. import dtypes
    from ..controlnet.files import save_controlnet
    from ..dit.checkpoint import load_dit
    from ..files.fingerprint import fingerprint, sha256_file
    from ..text.loading import load_text_encoders
    from ..training import distributed
    from ..training.controlnet_inputs import with_controls
    from ..training.controlnet_training import ControlNetTraining
    from ..training.feature_cache import FeatureCache
    from ..training.lora_inputs import Encoders, prepare
    from ..training.lora_training import run as train
    from ..training.lora_training import save_training_state
    from ..vae.loading import load_vae

    check_numbers(args)
    settings, config = _configs(args)
    output, state_path = checked_paths(args, TrainControlNetUsageError)
    dit_path = resolve_model("diffusion_models", args.dit)
    gemma_path, jina_path = resolve_model("text_encoders", args.gemma), resolve_model("text_encoders", args.jina)
    vae_path = resolve_model("vae", args.vae)
    if config.init not in ("dit", "random"):
        config = dataclasses.replace(config, init=str(resolve_model("controlnet", config.init)))

    job = distributed.start(args.device)
    try:
        cache = FeatureCache(args.cache_dir or args.data / ".nextdit-cache", fingerprint(vae_path),
                             f"{fingerprint(gemma_path)}-{fingerprint(jina_path)}")
        encoders = Encoders(lambda: load_vae(vae_path, device=job.device),
                            lambda: load_text_encoders(gemma_path, jina_path, device=job.device), job.device)
        data = prepare(args.data, settings, cache, encoders, job, progress=not args.no_progress)
        controls = with_controls(data, encoders, job, args.control)
        if job.is_main:
            for skipped in data.skipped:
                print(f"skipped {skipped}")
            print(f"{data.layout}: {len(data.items)} images with control images train, {len(data.skipped)} "
                  f"skipped; {data.counts}")
        if not data.items:
            raise TrainControlNetUsageError(f"no usable image and control image pairs in {args.data} (see the "
                                            f"skipped files above)")
        dit_dtype = dtypes.auto_name(job.device, fp16_safe=False) if args.dtype == dtypes.AUTO else args.dtype
        model = load_dit(dit_path, dtype=dit_dtype, device=job.device)
        training = ControlNetTraining(model, controls, config, job)
        if args.resume:
            resume(training, state_path, TrainControlNetUsageError)
        save_dtype = dtypes.torch_dtype(args.save_dtype)
        kind = args.control_kind or args.control or "image"
        training_settings = json.dumps({**_settings(config, training.net), "processes": job.world_size,
                                        "resolution": args.resolution, "images": len(data.items)}, sort_keys=True)
        metadata = {"base_model": dit_path.name, "base_model_sha256": sha256_file(dit_path) if job.is_main else "",
                    "trainer": "nextdit-nodes train-controlnet"}

        def write(path: Path, step: int) -> Path:
            return save_controlnet(path, training.net, control=kind, base=fingerprint(dit_path),
                                   training=training_settings, metadata={**metadata, "steps_done": str(step)},
                                   dtype=save_dtype)

        def checkpoint(step: int) -> None:
            if args.save_every and step % args.save_every == 0 and step < config.steps:
                write(output.with_name(f"{output.stem}-step{step:06d}.safetensors"), step)
                save_training_state(training, state_path)

        train(training, progress=not args.no_progress, every=args.save_every, on_every=checkpoint)
        if job.is_main:
            path = write(output, training.step)
            print(f"wrote {path} ({len(training.net.control_blocks)} control blocks, {training.step} steps)")
    finally:
        distributed.finish(job)
    return 0


def _settings(config, net) -> dict:
    """The training settings as recorded in the file: the network's real block count (a fine-tuned
    file keeps its own) and, for ``--init FILE``, the file's name (not a path of this machine)."""
    from dataclasses import asdict

    settings = {**asdict(config), "blocks": len(net.control_blocks)}
    if config.init not in ("dit", "random"):
        settings["init"] = Path(config.init).name
    return settings
