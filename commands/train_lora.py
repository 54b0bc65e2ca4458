"""``python -m nextdit_nodes train-lora DATA --dit MODEL --gemma G --jina J --vae V --output FILE``:
train a LoRA for the Next-DiT on a folder of captioned images.

DATA is a folder of images with same-stem captions (.txt, or .xml for NewBie XML), or with a
metadata.jsonl ({"image": ..., "text": ...}) or metadata.csv (file_name,text). Images that cannot be
read, are too small or have an aspect ratio outside --aspect-range are skipped and listed. Latents
and text features are computed once into --cache-dir and reused by later runs.

The output is one .safetensors LoRA (diffusion_model.<module>.lora_A/lora_B/alpha) that NextDiT LoRA
Loader and ComfyUI core's LoRA loaders read, with its rank, alpha, the base model's SHA-256 and the
training settings in the metadata.

Under ``torchrun --nproc_per_node N`` (any number of nodes) the same command trains one LoRA with N
processes: --batch-size is per process, the data is split by rank, gradients are averaged, and only
the first process writes the LoRA, checkpoints and samples and shows progress (the feature cache is
filled by all, each its share of the images).

Prior preservation (DreamBooth's, for a few images of a new concept): --prior-prompts FILE makes
the base model draw --prior-images images of those prompts before training (cached in
--cache-dir, reused by later runs), and/or --prior-data DIR adds a folder of images you already
have; every step then trains on --batch-size images of DATA and --prior-batch prior images, with
the loss DATA's mean + --prior-weight × the prior's mean, so the LoRA keeps what the model drew.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from ..dit.params import LORA_TARGETS
from ..files.atomic import clean_leftovers
from ..runtime.errors import EXIT_BAD_WORKFLOW, RunnerError
from ..runtime.model_sources import resolve_model
from .arguments import UsageError, add_dataset_and_models, read_prompts

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ",".join(LORA_TARGETS)


class TrainLoraUsageError(UsageError):
    """A bad combination of train-lora options or an unusable dataset."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-lora", help="train a LoRA on a folder of captioned images", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_and_models(parser, "the LoRA file to write (.safetensors)")
    data = parser.add_argument_group("data")
    data.add_argument("--resolution", type=int, default=1024,
                      help="bucket pixel count = resolution² (a multiple of 16; default 1024)")
    data.add_argument("--center-crop", action="store_true",
                      help="centre-crop every image to resolution × resolution instead of aspect-ratio buckets")
    data.add_argument("--min-side", type=int, default=None,
                      help="skip images whose shorter side is below this (default: resolution / 2)")
    data.add_argument("--aspect-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                      help="keep images with width / height in this range (default 0.5 2.0)")
    data.add_argument("--system-prompt", default="auto",
                      help="Gemma's system prompt: auto (the official XML one for XML captions, the official "
                           "plain one otherwise, as the base training did), 'xml (official)', 'plain (official)', "
                           "none, or any other text used verbatim")
    data.add_argument("--caption-dropout", type=float, default=0.1,
                      help="share of samples trained with both encoders' texts blank (default 0.1)")
    data.add_argument("--cache-dir", type=Path, default=None,
                      help="where latents and text features are kept (default DATA/.nextdit-cache)")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    train.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    train.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, scale 1)")
    train.add_argument("--targets", default=DEFAULT_TARGETS,
                       help=f"comma-separated Linear names to adapt in every block (default {DEFAULT_TARGETS})")
    train.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    train.add_argument("--batch-size", type=int, default=1,
                       help="images per process and micro-batch (default 1; the job's batch is this × processes)")
    train.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    train.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                       help="learning rate after the warm-up (default constant)")
    train.add_argument("--time-shift", type=float, default=None,
                       help="shift of the logit-normal training times towards noise (default e^1.15 = 3.158, the "
                            "official training's; 1 = no shift)")
    train.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off; default 1)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-checkpointing", action="store_true",
                       help="keep all activations for backward (faster, far more memory; default: gradient "
                            "checkpointing on every block)")
    prior = parser.add_argument_group(
        "prior preservation (keeps what the model already draws; for a few images of a new concept)")
    prior.add_argument("--prior-prompts", type=Path, default=None, metavar="FILE",
                       help="text file, one prompt per line (\\n in a line is a line break): prompts of what the "
                            "model should keep drawing, none of them of the new concept; the base model draws "
                            "--prior-images images of them before training, at its recorded sampler settings "
                            "(else --sample-steps Euler steps at CFG --sample-cfg), seeds --seed + i, cached in "
                            "--cache-dir")
    prior.add_argument("--prior-images", type=int, default=None, metavar="N",
                       help="how many images the base model draws of --prior-prompts, cycling through them "
                            "(default: one per prompt)")
    prior.add_argument("--prior-data", type=Path, default=None, metavar="DIR",
                       help="a dataset folder (any layout DATA may have) of images the model should keep drawing; "
                            "with --prior-prompts both are used")
    prior.add_argument("--prior-weight", type=float, default=None, metavar="W",
                       help="loss weight of the prior images (default 1: the loss is DATA's mean + this × the "
                            "prior's mean; 0 trains exactly as without a prior)")
    prior.add_argument("--prior-batch", type=int, default=None, metavar="N",
                       help="prior images per process in every micro-batch, besides --batch-size images of DATA "
                            "(default: --batch-size)")
    out = parser.add_argument_group("checkpoints, samples, devices")
    out.add_argument("--save-every", type=int, default=0,
                     help="also write <output>-stepNNNNNN.safetensors and the training state every N steps")
    out.add_argument("--resume", action="store_true",
                     help="continue from <output stem>.training-state.pt (written with --save-every)")
    out.add_argument("--sample-prompts", type=Path, default=None,
                     help="text file, one prompt per line (\\n in a line is a line break): images of them every "
                          "--sample-every steps")
    out.add_argument("--sample-every", type=int, default=0)
    out.add_argument("--sample-steps", type=int, default=28, help="Euler steps of the samples (default 28)")
    out.add_argument("--sample-cfg", type=float, default=4.5, help="CFG of the samples (default 4.5)")
    out.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                     help="base weights (auto: bf16 with bf16 autocast on a GPU that has it, fp32 elsewhere)")
    out.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: a GPU when there is one (under torchrun each process takes GPU LOCAL_RANK)")
    out.add_argument("--save-dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                     help="dtype of the LoRA tensors in the file (default bf16)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


class TrainLoraValueError(RunnerError):
    """An option value out of range or not a finite number, or a dataset that cannot be read."""

    exit_code = EXIT_BAD_WORKFLOW


# Every numeric option: (smallest, largest, whether the smallest itself is allowed). Checked
# before anything loads, so `--lr nan` is named at once rather than training to NaN weights.
NUMERIC_RANGES = {
    "resolution": (16, 16384, True), "min_side": (0, 16384, True), "caption_dropout": (0.0, 1.0, True),
    "steps": (1, 10**9, True), "rank": (1, 4096, True), "alpha": (0.0, 1e6, False), "lr": (0.0, 1e3, False),
    "batch_size": (1, 4096, True), "accumulation": (1, 10**6, True), "weight_decay": (0.0, 10.0, True),
    "warmup": (0, 10**9, True), "time_shift": (0.0, 1e3, False), "grad_clip": (0.0, 1e6, True),
    "seed": (0, 2**64 - 1, True), "save_every": (0, 10**9, True), "sample_every": (0, 10**9, True),
    "sample_steps": (1, 10**4, True), "sample_cfg": (0.0, 100.0, True),
    "prior_images": (0, 10**7, True), "prior_weight": (0.0, 1e6, True), "prior_batch": (1, 4096, True),
}


def check_numbers(args) -> None:
    """Refuse a numeric option that is not finite or outside its range, naming it."""
    values = {name: getattr(args, name, None) for name in NUMERIC_RANGES}
    for index, bound in enumerate(getattr(args, "aspect_range", ()) or ()):
        values[f"aspect_range[{index}]"] = bound
    for name, value in values.items():
        if value is None:
            continue
        low, high, low_allowed = NUMERIC_RANGES.get(name, (0.0, 1e3, False))
        option = "--" + name.split("[")[0].replace("_", "-")
        if not math.isfinite(value):
            raise TrainLoraValueError(f"{option} {value}: not a finite number")
        if value < low or (value == low and not low_allowed) or value > high:
            above = "at least" if low_allowed else "above"
            raise TrainLoraValueError(f"{option} {value}: must be {above} {low} and at most {high}")
    if values["caption_dropout"] is not None and values["caption_dropout"] >= 1:
        raise TrainLoraValueError(f"--caption-dropout {values['caption_dropout']}: must be below 1")


def prior_prompts(args) -> tuple[str, ...]:
    """The --prior-prompts (exit 3 for a missing or empty file), and the prior options' combinations
    checked, before anything loads."""
    if (args.prior_weight is not None or args.prior_batch is not None) and not (args.prior_prompts or args.prior_data):
        raise TrainLoraUsageError("--prior-weight and --prior-batch need prior images: --prior-prompts FILE "
                                  "(the base model draws them) or --prior-data DIR")
    if args.prior_images and not args.prior_prompts:
        raise TrainLoraUsageError("--prior-images needs --prior-prompts (a file with one prompt per line)")
    if args.prior_data is not None:
        if not args.prior_data.is_dir():
            raise TrainLoraValueError(f"--prior-data: dataset folder {args.prior_data} does not exist")
        _check_dataset(args.prior_data)
    if args.prior_prompts is None:
        return ()
    try:
        return tuple(read_prompts(args.prior_prompts, "prior prompts"))
    except UsageError as error:
        raise TrainLoraValueError(f"--prior-prompts: {error}") from None


def _check_dataset(folder: Path) -> None:
    """Read the dataset's listing before any model loads: a metadata file that cannot be used
    stops here (exit 3); captions that are not valid XML are warned about with file and place."""
    from ..training.lora_data import DatasetError, scan_dataset

    try:
        scan = scan_dataset(folder)
    except DatasetError as error:
        raise TrainLoraValueError(str(error)) from None
    for warning in scan.warnings:
        log.warning("%s", warning)


def checked_paths(args, usage_error) -> tuple[Path, Path]:
    """What train-lora and train-controlnet check before anything loads: the dataset folder and its
    listing, leftovers of a killed run cleaned, and the output file and its training state's path
    (``usage_error``: the command's own usage error)."""
    if not args.data.is_dir():
        raise usage_error(f"dataset folder {args.data} does not exist")
    _check_dataset(args.data)
    clean_leftovers(args.output.parent, recursive=False)  # what a killed run left half written
    clean_leftovers(args.cache_dir or args.data / ".nextdit-cache")
    output = args.output if args.output.suffix == ".safetensors" else args.output.with_suffix(".safetensors")
    state_path = output.with_name(f"{output.stem}.training-state.pt")
    if output.exists() and not (args.overwrite or args.resume):
        raise usage_error(f"{output} exists; choose another --output, pass --overwrite, or --resume")
    if args.resume and not state_path.is_file():
        raise usage_error(f"--resume needs {state_path} (written by --save-every)")
    return output, state_path


def resume(training, state_path: Path, usage_error) -> None:
    """Continue ``training`` from the state --save-every wrote (a mismatching one is a usage error)."""
    import torch

    try:
        training.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    except ValueError as error:
        raise usage_error(f"{state_path}: {error}") from None
    log.info("resumed at step %d of %d", training.step, training.config.steps)


def _configs(args):
    from ..training.buckets import bucket_sizes
    from ..training.flow import OFFICIAL_TIME_SHIFT
    from ..training.lora_data import Filters
    from ..training.lora_inputs import InputSettings
    from ..training.lora_training import LoraTrainingConfig

    targets = tuple(name.strip() for name in args.targets.split(",") if name.strip())
    try:
        min_side = args.min_side if args.min_side is not None else args.resolution // 2
        settings = InputSettings(args.resolution, Filters(min_side, *args.aspect_range), args.center_crop,
                                 args.system_prompt)
        config = LoraTrainingConfig(
            rank=args.rank, alpha=args.alpha, targets=targets, steps=args.steps, batch_size=args.batch_size,
            accumulation=args.accumulation, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
            schedule=args.schedule, optimizer=args.optimizer, caption_dropout=args.caption_dropout,
            time_shift=OFFICIAL_TIME_SHIFT if args.time_shift is None else args.time_shift,
            grad_clip=args.grad_clip, checkpointing=not args.no_checkpointing, seed=args.seed,
            prior_weight=1.0 if args.prior_weight is None else args.prior_weight, prior_batch=args.prior_batch or 0)
        bucket_sizes(args.resolution, *args.aspect_range)   # checks the resolution
    except ValueError as error:
        raise TrainLoraUsageError(str(error)) from None
    return settings, config


def _metadata(args, config, dit_path: Path, data, job, dit_sha256: str, prior) -> dict[str, str]:
    from dataclasses import asdict

    settings = {**asdict(config), "prior_images": len(prior.items) if prior else 0,
                "targets": list(config.targets), "processes": job.world_size,
                "global_batch": config.batch_size * config.accumulation * job.world_size,
                "resolution": args.resolution, "center_crop": args.center_crop,
                "aspect_range": list(args.aspect_range), "system_prompt": args.system_prompt,
                "images": len(data.items), "buckets": sorted({f"{w}x{h}" for w, h in
                                                             (item.bucket for item in data.items)})}
    return {"lora_rank": str(config.rank), "lora_alpha": f"{config.lora_alpha:g}",
            "base_model": dit_path.name, "base_model_sha256": dit_sha256,
            "trainer": "nextdit-nodes train-lora", "training_settings": json.dumps(settings, sort_keys=True)}


def run(args) -> int:
    """Prepare the data, train, write the LoRA; returns the exit code."""

    from .. import dtypes
    from ..dit.checkpoint import load_dit
    from ..files.fingerprint import fingerprint, sha256_file
    from ..lora.save import save_lora
    from ..text.loading import load_text_encoders
    from ..training import distributed
    from ..training.feature_cache import FeatureCache
    from ..training.lora_inputs import Encoders, prepare
    from ..training.lora_training import LoraTraining, overfitting_warning, save_training_state
    from ..training.lora_training import run as train
    from ..vae.loading import load_vae

    check_numbers(args)
    settings, config = _configs(args)
    output, state_path = checked_paths(args, TrainLoraUsageError)
    priors = prior_prompts(args)
    prompts = tuple(read_prompts(args.sample_prompts, "sample prompts")) if args.sample_prompts else ()
    if args.sample_every and not prompts:
        raise TrainLoraUsageError("--sample-every needs --sample-prompts (a file with one prompt per line)")
    dit_path = resolve_model("diffusion_models", args.dit)
    gemma_path, jina_path = resolve_model("text_encoders", args.gemma), resolve_model("text_encoders", args.jina)
    vae_path = resolve_model("vae", args.vae)

    job = distributed.start(args.device)
    try:
        cache = FeatureCache(args.cache_dir or args.data / ".nextdit-cache", fingerprint(vae_path),
                             f"{fingerprint(gemma_path)}-{fingerprint(jina_path)}")
        encoders = Encoders(lambda: load_vae(vae_path, device=job.device),
                            lambda: load_text_encoders(gemma_path, jina_path, device=job.device),
                            job.device)
        data = prepare(args.data, settings, cache, encoders, job, prompts + priors, progress=not args.no_progress)
        if job.is_main:
            for skipped in data.skipped:
                print(f"skipped {skipped}")
            print(f"{data.layout}: {len(data.items)} images train, {len(data.skipped)} skipped; {data.counts}")
        if not data.items:
            raise TrainLoraUsageError(f"no usable images in {args.data} (see the skipped files above)")
        has_prior = args.prior_data is not None or bool(priors and args.prior_images != 0)
        warning = overfitting_warning(len(data.items), config.steps,
                                      config.batch_size * config.accumulation * job.world_size, has_prior)
        if warning and job.is_main:
            log.warning("%s", warning)

        # auto: as for a component that is not fp16-safe (fp16 training would need loss scaling).
        dit_dtype = dtypes.auto_name(job.device, fp16_safe=False) if args.dtype == dtypes.AUTO else args.dtype
        model = load_dit(dit_path, dtype=dit_dtype, device=job.device)
        prior = _prior_set(args, priors, model, data, settings, encoders, job,
                           f"{fingerprint(dit_path)}-{dit_dtype}-{cache.text_id}-{cache.vae_id}")
        training = LoraTraining(model, data, config, job, prior)
        if args.resume:
            resume(training, state_path, TrainLoraUsageError)
        save_dtype = dtypes.torch_dtype(args.save_dtype)
        metadata = _metadata(args, config, dit_path, data, job, sha256_file(dit_path) if job.is_main else "", prior)
        samples = _Samples(prompts, data, encoders, args, output) if prompts and args.sample_every else None

        def checkpoint(step: int) -> None:
            if args.save_every and step % args.save_every == 0 and step < config.steps:
                save_lora(output.with_name(f"{output.stem}-step{step:06d}.safetensors"), training.pairs(),
                          config.lora_alpha, {**metadata, "steps_done": str(step)}, save_dtype)
                save_training_state(training, state_path)
            if samples is not None and (step % args.sample_every == 0 or step == config.steps):
                samples.write(model, step)

        train(training, progress=not args.no_progress, every=_gcd_every(args), on_every=checkpoint)
        if job.is_main:
            path = save_lora(output, training.pairs(), config.lora_alpha,
                             {**metadata, "steps_done": str(training.step)}, save_dtype)
            print(f"wrote {path} ({len(training.pairs())} modules, rank {config.rank}, alpha "
                  f"{config.lora_alpha:g}, {training.step} steps)")
    finally:
        distributed.finish(job)
    return 0


def sampler_settings(args):
    """How train-lora samples a model that records no settings of its own: Euler, --sample-steps,
    CFG --sample-cfg on every step."""
    from ..sampler_settings import SamplerSettings

    return SamplerSettings(steps=args.sample_steps, solver="euler", cfg=args.sample_cfg, cfg_trunc=1.0)


def _prior_set(args, prompts: tuple[str, ...], model, data, settings, encoders, job, model_id: str):
    """The prior images as one training set (``training/prior_images.py``): the base model's images of
    ``prompts`` (drawn now, or found in the cache) and --prior-data; None without either."""
    from ..training import prior_images
    from ..training.lora_inputs import prepare, merged

    folders = []
    if prompts:
        count = len(prompts) if args.prior_images is None else args.prior_images
        if count:
            sampler = prior_images.settings_for(model, sampler_settings(args))
            key = prior_images.folder_key(model_id, prompts, count, args.seed, args.resolution, sampler)
            folders.append(prior_images.generate(
                model, prompts, count, data.cache.folder / "prior-images" / key,
                lambda text: data.cache.conditioning(data.extra_keys[text]), encoders.vae.decode, sampler,
                args.resolution, args.seed, job, progress=not args.no_progress))
    if args.prior_data is not None:
        folders.append(args.prior_data)
    if not folders:
        return None
    sets = [prepare(folder, settings, data.cache, encoders, job, progress=not args.no_progress) for folder in folders]
    prior = merged(sets)
    if job.is_main:
        for skipped in prior.skipped:
            print(f"skipped (prior) {skipped}")
        print(f"prior: {len(prior.items)} images, {len(prior.skipped)} skipped; {prior.counts}")
    if not prior.items:
        raise TrainLoraUsageError("no usable prior images (see the skipped files above)")
    return prior


def _gcd_every(args) -> int:
    import math

    every = [n for n in (args.save_every, args.sample_every) if n]
    return math.gcd(*every) if every else 0


class _Samples:
    """Images of the sample prompts with the LoRA being trained (first process only)."""

    def __init__(self, prompts, data, encoders, args, output: Path):
        self.prompts, self.data, self.encoders, self.args = prompts, data, encoders, args
        self.folder = output.with_name(f"{output.stem}-samples")

    def write(self, model, step: int) -> None:
        from ..training.prior_images import draw_png

        self.folder.mkdir(parents=True, exist_ok=True)
        negative = self.data.cache.conditioning(self.data.empty_key)
        settings = sampler_settings(self.args)
        for index, prompt in enumerate(self.prompts):
            positive = self.data.cache.conditioning(self.data.extra_keys[prompt])
            draw_png(model, positive, negative, settings, self.args.resolution, self.args.seed + index,
                     self.encoders.vae.decode, self.folder / f"step{step:06d}-{index}.png")
        log.info("samples of step %d in %s", step, self.folder)
