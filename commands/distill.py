"""``python -m nextdit_nodes distill TEACHER ...``: make a guidance-distilled student.

The student (teacher + guidance embedder, trained to give the teacher's CFG velocity in one
forward; see ``training/distill.py``) is written as one safetensors file in the official key layout
plus ``guidance_embedder.*``, which NextDiT Loader reads: by default
``<teacher stem>-distilled.safetensors`` next to the teacher. Sample it with NextDiT Sampler at
cfg 1 and guidance = the scale you want.

With --steps N it makes a few-step student instead (``training/step_distill.py``): from a
guidance-distilled student, or from a teacher after making (or with --resume reusing) its
guidance-distilled student, which then starts the few-step student while the teacher's own CFG
paths are its first targets (--cfg-teacher names the teacher of a given guidance-distilled
student). That file records its steps, solver, shift and guidance scale, which NextDiT Sampler
uses with steps 0. By default ``<student stem>-<N>step.safetensors``.

Training prompts, one of:
  --prompts FILE (one prompt per line; blank lines and lines starting with # skipped) with
    --gemma and --jina: encoded once with NextDiT Text Encode, then the encoders are freed;
  --conditionings FILE: precomputed (``text.conditioning.save_conditionings``).

Under ``torchrun --nproc_per_node N`` (any number of nodes) the same command trains one student
with N processes: each draws the job's states and keeps its share (--batch-size per process),
gradients are averaged, and only the first process writes the file and shows progress.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import replace
from pathlib import Path

from .. import dtypes
from ..runtime.model_sources import resolve_model
from ..sampler_settings import DEFAULT_SHIFT
from .arguments import UsageError, read_prompts

log = logging.getLogger(__name__)


class DistillUsageError(UsageError):
    """A bad combination of distill options."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="train a guidance-distilled student (one forward per step instead of CFG's two)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="Next-DiT weights: a name in models/diffusion_models or a path")
    source = parser.add_argument_group("training prompts (one of)")
    source.add_argument("--prompts", type=Path, help="text file, one prompt per line (needs --gemma, --jina)")
    source.add_argument("--conditionings", type=Path, help="precomputed conditionings .safetensors")
    text = parser.add_argument_group("text encoding (with --prompts)")
    text.add_argument("--gemma", help="Gemma 3 4B-it: a name in models/text_encoders or a path")
    text.add_argument("--jina", help="Jina CLIP v2: a name in models/text_encoders or a path")
    text.add_argument("--system-prompt", default="xml (official)",
                      help="xml (official), plain (official), none, or any other text used verbatim")
    text.add_argument("--negative", default="", help="negative prompt (default: empty, the official default)")
    train = parser.add_argument_group("training")
    train.add_argument("--mode", choices=("lora", "full"), default=None,
                       help="lora: guidance embedder + LoRA on attention/MLP, merged when saved (default; with "
                            "--layers: LoRA on the kept layers); full: every weight (needs several times the "
                            "model's size in memory; the default with --layers)")
    train.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    train.add_argument("--iterations", type=int, default=2000, help="training iterations (default 2000)")
    train.add_argument("--batch-size", type=int, default=4,
                       help="latents per iteration and process (default 4; the job's batch is this × processes)")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate of the LoRA (default 1e-4) or of all weights in full mode (1e-5)")
    train.add_argument("--embedder-lr", type=float, default=1e-3, help="learning rate of the guidance embedder")
    train.add_argument("--guidance-min", type=float, default=1.0, help="smallest guidance scale trained (1)")
    train.add_argument("--guidance-max", type=float, default=8.0, help="largest guidance scale trained (8)")
    train.add_argument("--shift", type=float, default=DEFAULT_SHIFT,
                       help=f"time shift of the trajectories ({DEFAULT_SHIFT:g})")
    train.add_argument("--trajectory-steps", type=int, default=16,
                       help="typical Euler steps K of the teacher trajectories giving the training states; each "
                            "trajectory draws K/2..2K (16)")
    train.add_argument("--width", type=int, default=1024, help="image width of the trajectories (1024)")
    train.add_argument("--height", type=int, default=1024, help="image height of the trajectories (1024)")
    train.add_argument("--latents", type=Path,
                       help="optional .safetensors with 'latents' (N,16,h,w) raw FLUX latents of training "
                            "images; default: data-free teacher trajectories")
    train.add_argument("--scale-weighted-loss", action="store_true",
                       help="divide each sample's error by its guidance scale squared, so low scales are "
                            "fitted as closely as high ones (default: plain MSE)")
    train.add_argument("--student-trajectories", action="store_true",
                       help="advance the data-free trajectories with the student's own velocity (on-policy): "
                            "it trains on the states its sampling reaches, labelled by the teacher (default: "
                            "the teacher's trajectories)")
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                       help="AdamW (default), or plain gradient steps (sgd)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-checkpointing", action="store_true",
                       help="keep all activations for backward (faster, far more memory; default: "
                            "gradient checkpointing on every block)")
    out = parser.add_argument_group("devices and output")
    out.add_argument("--dtype", choices=dtypes.DTYPES, default="auto",
                     help="teacher weights in memory (auto: bf16 on a GPU, fp32 on the CPU; not fp8)")
    out.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: a GPU when there is one (under torchrun each process takes GPU LOCAL_RANK)")
    out.add_argument("--save-dtype", choices=("same", *dtypes.DTYPES[1:]), default="same",
                     help="dtype of the written weights (default: the teacher's)")
    out.add_argument("--output", type=Path, help="output file (default <teacher stem>-distilled.safetensors "
                                                 "next to the teacher)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_step_arguments(parser)
    _add_layer_arguments(parser)
    parser.set_defaults(func=run)


def _encode_prompts(args) -> tuple[list, object]:
    """Encode with the pack's own text nodes (the same path a workflow takes), then free them."""
    from ..nodes.text import SYSTEM_PROMPT_CHOICES, NextDiTTextEncode, NextDiTTextEncoderLoader

    if not (args.gemma and args.jina):
        raise DistillUsageError("--prompts needs --gemma and --jina (the text encoders)")
    prompts = read_prompts(args.prompts)
    gemma, jina = resolve_model("text_encoders", args.gemma), resolve_model("text_encoders", args.jina)
    (encoders,) = NextDiTTextEncoderLoader().load(str(gemma), str(jina))
    preset = args.system_prompt in SYSTEM_PROMPT_CHOICES and args.system_prompt != "custom"
    choice, custom = (args.system_prompt, "") if preset else ("custom", args.system_prompt)
    encode = NextDiTTextEncode()
    log.info("encoding %d prompts", len(prompts))
    positives = [encode.encode(encoders, prompt, choice, custom)[0] for prompt in prompts]
    negative = encode.encode(encoders, args.negative, choice, custom)[0]
    if hasattr(encoders, "free"):
        encoders.free()
    return positives, negative


def _load_latents(path: Path):
    from safetensors.torch import load_file

    from ..vae.latent_format import FLUX

    tensors = load_file(str(path))
    if "latents" not in tensors or tensors["latents"].ndim != 4:
        raise DistillUsageError(f"{path} must hold a 'latents' tensor (N, 16, h, w) of raw FLUX latents")
    return FLUX.from_raw(tensors["latents"].float())


def _check_prompt_source(args) -> None:
    if (args.prompts is None) == (args.conditionings is None):
        raise DistillUsageError("give exactly one of --prompts (with --gemma/--jina) or --conditionings")
    if args.conditionings is not None and not args.conditionings.is_file():
        raise DistillUsageError(f"conditionings file {args.conditionings} does not exist")


def _training_prompts(args) -> tuple[list, object]:
    """(positives, negative) CONDITIONINGs from --conditionings or encoded from --prompts."""
    from ..text.conditioning import load_conditionings

    return load_conditionings(args.conditionings) if args.conditionings is not None else _encode_prompts(args)


def _learning_rate(args) -> float:
    return args.lr if args.lr is not None else (1e-4 if args.mode == "lora" else 1e-5)


def _save_dtype(args):
    return None if args.save_dtype == "same" else dtypes.torch_dtype(args.save_dtype)


def run(args) -> int:
    """Load the teacher, get the conditionings, train, write the student; returns the exit code."""
    if getattr(args, "layers", None) is not None or getattr(args, "keep", None) is not None:
        return _run_layers(args)   # a compact student (training/compact.py)
    if args.mode is None:
        args.mode = "lora"
    if getattr(args, "steps", None):   # a few-step student (training/step_distill.py)
        return _run_steps(args)
    from ..training.distill import default_output_path

    _check_prompt_source(args)
    teacher_path = resolve_model("diffusion_models", args.teacher)
    output = args.output or default_output_path(teacher_path)
    config = _guidance_config(args, output)
    _distill_guidance(args, config, teacher_path, output, *_training_prompts(args))
    return 0


def _guidance_config(args, output: Path):
    """The guidance stage's DistillConfig, after the checks that need no model or prompt."""
    from ..training.distill import DistillConfig

    if args.student_trajectories and args.latents is not None:
        raise DistillUsageError("--student-trajectories advances the data-free trajectories; with --latents the "
                                "states are noised training latents. Drop one of the two options")
    if output.exists() and not args.overwrite:
        raise DistillUsageError(f"{output} exists; choose another --output or pass --overwrite")
    try:
        return DistillConfig(mode=args.mode, rank=args.rank, iterations=args.iterations,
                             batch_size=args.batch_size, lr=_learning_rate(args), embedder_lr=args.embedder_lr,
                             guidance_min=args.guidance_min, guidance_max=args.guidance_max,
                             shift=args.shift, trajectory_steps=args.trajectory_steps,
                             width=args.width, height=args.height, seed=args.seed,
                             checkpointing=not args.no_checkpointing,
                             scale_weighted_loss=args.scale_weighted_loss,
                             student_trajectories=args.student_trajectories, optimizer=args.optimizer)
    except ValueError as error:
        raise DistillUsageError(str(error)) from None


def _distill_guidance(args, config, teacher_path: Path, output: Path, positives: list, negative) -> None:
    """Train the guidance-distilled student of the teacher at ``teacher_path`` and write it to ``output``."""
    from ..dit.checkpoint import load_dit
    from ..training import distributed
    from ..training.distill import distill, save_student

    latents = _load_latents(args.latents) if args.latents is not None else None
    job = distributed.start(args.device)
    try:
        teacher = load_dit(teacher_path, dtype=args.dtype, device=job.device)
        log.info("distilling %s (%s mode, %d prompts, %d iterations, %d process(es)) into %s", teacher_path.name,
                 args.mode, len(positives), args.iterations, job.world_size, output)
        student = distill(teacher, positives, negative, config, latents=latents, progress=not args.no_progress,
                          job=job)
        if job.is_main:
            metadata = {"teacher": teacher_path.name, "guidance_range": f"{args.guidance_min}-{args.guidance_max}",
                        "distill_mode": args.mode, "iterations": str(args.iterations),
                        "batch": f"{args.batch_size} x {job.world_size} process(es)"}
            path = save_student(student, output, dtype=_save_dtype(args), metadata=metadata,
                                overwrite=args.overwrite)
            print(f"wrote {path}: sample it with cfg 1 and guidance {args.guidance_min:g}-{args.guidance_max:g}")
    finally:
        distributed.finish(job)


# ---- --steps: a few-step student (training/step_distill.py) ------------------------------------

def _add_step_arguments(parser) -> None:
    steps = parser.add_argument_group("few-step student (--steps; also uses --prompts/--conditionings, --mode, "
                                      "--rank, --lr, --batch-size, --shift, --width, --height, --seed)")
    steps.add_argument("--steps", type=int, default=0,
                       help="make an N-step student (one model call per step); TEACHER may be a guidance-distilled "
                            "student or a teacher (its guidance-distilled student is made first)")
    steps.add_argument("--step-method", choices=("progressive", "segment"), default="progressive",
                       help="progressive: rounds halving the step count, each matching two steps of the previous "
                            "round's student (Meng et al.); segment: each step matches the teacher's "
                            "--teacher-steps solution over it (default progressive)")
    steps.add_argument("--start-steps", type=int,
                       help="progressive: the step count the guidance-distilled student starts from, N times a "
                            "power of 2 (default: the smallest such count of at least 16)")
    steps.add_argument("--teacher-steps", type=int, default=32,
                       help="segment: the teacher's Euler steps over the whole grid, a multiple of N (default 32)")
    steps.add_argument("--step-iterations", type=int, default=400, help="iterations per round (default 400)")
    steps.add_argument("--step-guidance", type=float,
                       help="train at this one guidance scale, recorded in the file so the sampler uses it "
                            "(default: the range --guidance-min..--guidance-max, chosen when sampling)")
    steps.add_argument("--cfg-teacher", metavar="FILE",
                       help="when TEACHER is a guidance-distilled student: the teacher it was made from, whose CFG "
                            "paths (at the trained guidance scales, --negative as the unconditional prompt) the first "
                            "round then learns (the default when TEACHER is the teacher itself)")
    steps.add_argument("--student-targets", action="store_true",
                       help="learn the guidance-distilled student's own paths even when the teacher is known "
                            "(Meng et al. as published; on the embedded model the teacher's CFG paths did better)")
    steps.add_argument("--save-rounds", action="store_true",
                       help="progressive: also write each round's student (<student stem>-<n>step.safetensors)")
    steps.add_argument("--resume", action="store_true",
                       help="reuse the guidance-distilled student and any round students already written "
                            "instead of training them again")


def step_output_path(student_path: Path, steps: int) -> Path:
    """``<student stem>-<N>step.safetensors`` next to the guidance-distilled student."""
    return student_path.with_name(f"{student_path.stem}-{steps}step.safetensors")


def _is_guidance_student(path: Path) -> bool:
    from ..files.tensors import open_weights

    return any("guidance_embedder." in key for key in open_weights(path, subfolder="transformer"))


def _guidance_student(args, teacher_path: Path, prompts) -> Path:
    """The guidance-distilled student made from the teacher at ``teacher_path`` by the guidance
    stage (this command without --steps) or, with --resume, the one already made. prompts():
    the training prompts, encoded once for both stages."""
    from ..training.distill import default_output_path

    path = default_output_path(teacher_path)
    if path.exists() and args.resume:
        log.info("starting from the guidance-distilled student %s (--resume)", path)
        return path
    if path.exists() and not args.overwrite:
        raise DistillUsageError(f"{path} exists: pass --resume to start the step distillation from it, or "
                                f"--overwrite to make it again")
    _distill_guidance(args, _guidance_config(args, path), teacher_path, path, *prompts())
    return path


def _run_steps(args) -> int:
    from ..dit.checkpoint import load_dit
    from ..training import distributed
    from ..training.distill import save_student
    from ..training.step_distill import StepDistillConfig, step_distill

    _check_prompt_source(args)
    if args.latents is not None:
        raise DistillUsageError("--latents is for the guidance stage alone; step distillation trains on its "
                                "own trajectories. Drop --latents (or run the guidance stage first without --steps)")
    start = args.start_steps or 2 * args.steps
    while args.start_steps is None and start < 16:    # default: the smallest N·2^k of at least 16
        start *= 2
    guidance = (args.step_guidance, args.step_guidance) if args.step_guidance is not None else (
        args.guidance_min, args.guidance_max)
    try:
        config = StepDistillConfig(
            steps=args.steps, method=args.step_method, start_steps=start, teacher_steps=args.teacher_steps,
            mode=args.mode, rank=args.rank, iterations=args.step_iterations, batch_size=args.batch_size,
            lr=_learning_rate(args), guidance_min=guidance[0], guidance_max=guidance[1], shift=args.shift,
            width=args.width, height=args.height, seed=args.seed, checkpointing=not args.no_checkpointing)
    except ValueError as error:
        raise DistillUsageError(str(error)) from None
    teacher_path = resolve_model("diffusion_models", args.teacher)
    given_student = _is_guidance_student(teacher_path)
    if args.cfg_teacher is not None and not given_student:
        raise DistillUsageError("--cfg-teacher is for a guidance-distilled TEACHER; this TEACHER is the teacher "
                                "itself, whose CFG paths are learnt already. Drop --cfg-teacher")
    prompts = functools.cache(lambda: _training_prompts(args))
    # A teacher's guidance stage runs first (under torchrun: a job of its own).
    guidance_student = teacher_path if given_student else _guidance_student(args, teacher_path, prompts)
    cfg_teacher_path = None if args.student_targets else (
        teacher_path if not given_student else
        resolve_model("diffusion_models", args.cfg_teacher) if args.cfg_teacher is not None else None)
    output = args.output or step_output_path(guidance_student, args.steps)
    if output.exists() and not args.overwrite:
        raise DistillUsageError(f"{output} exists; choose another --output or pass --overwrite")
    first = guidance_student
    if args.resume and config.method == "progressive":   # the round student closest to N already written
        for steps, _ in config.rounds()[:-1][::-1]:
            if step_output_path(guidance_student, steps).exists():
                first = step_output_path(guidance_student, steps)
                config = replace(config, start_steps=steps)
                cfg_teacher_path = None     # only the first round, done, learns the teacher's CFG paths
                log.info("resuming from the %d-step round student %s", steps, first)
                break
    positives, negative = prompts()
    save_dtype = _save_dtype(args)
    metadata = {"nextdit_distilled": "guidance+steps", "teacher": guidance_student.name,
                "step_method": config.method, "distill_mode": config.mode,
                "step_targets": (f"CFG of {cfg_teacher_path.name}" if cfg_teacher_path is not None
                                 else "the guidance-distilled student's own paths"),
                "iterations": f"{config.iterations} per round", **config.own_settings().to_metadata()}

    job = distributed.start(args.device)
    try:
        model = load_dit(first, dtype=args.dtype, device=job.device)
        cfg_teacher = (load_dit(cfg_teacher_path, dtype=args.dtype, device=job.device)
                       if cfg_teacher_path is not None else None)

        def save_round(student, steps: int) -> None:
            if args.save_rounds and job.is_main:
                path = save_student(student, step_output_path(guidance_student, steps), save_dtype,
                                    {**metadata, **replace(config.own_settings(), steps=steps).to_metadata()},
                                    overwrite=True)
                log.info("wrote the %d-step round student %s", steps, path)

        log.info("distilling %s into a %d-step student (%s, %s mode, %d prompts, %d process(es)) at %s", first.name,
                 args.steps, config.method, config.mode, len(positives), job.world_size, output)
        student = step_distill(model, positives, config, progress=not args.no_progress, on_round=save_round, job=job,
                               cfg_teacher=cfg_teacher, negative=negative if cfg_teacher is not None else None)
        if job.is_main:
            path = save_student(student, output, save_dtype, metadata, overwrite=args.overwrite)
            print(f"wrote {path}: sample it with NextDiT Sampler's steps 0 (its own settings: "
                  f"{config.own_settings().describe()})")
    finally:
        distributed.finish(job)
    return 0


# ---- --layers: a compact student (training/compact.py) ------------------------------------------

def _add_layer_arguments(parser) -> None:
    layers = parser.add_argument_group(
        "compact student (--layers or --keep; also uses --prompts/--conditionings, --negative, --mode, --rank, "
        "--lr, --iterations, --batch-size, --guidance-min/max, --shift, --trajectory-steps, --width, --height, "
        "--seed, --resume)")
    layers.add_argument("--layers", type=int,
                        help="make a student with K of TEACHER's joint layers (TEACHER: a teacher, or a "
                             "guidance-distilled or few-step student, whose recorded sampler settings it keeps)")
    layers.add_argument("--keep", help="the kept joint layers, e.g. 0,2,5 (default: chosen by --layer-rule)")
    layers.add_argument("--layer-rule", choices=("importance", "even"), default="importance",
                        help="importance: the K layers whose removal changes the parent's output most, measured "
                             "on its own training states (default); even: evenly spaced, first and last kept")
    layers.add_argument("--feature-weight", type=float, default=1.0,
                        help="weight of the feature loss at the kept layers' outputs (0: output distillation "
                             "alone; default 1)")
    layers.add_argument("--save-every", type=int, default=0,
                        help="write the training state (<output stem>.training-state.pt) every N iterations; "
                             "--resume continues from it")


def _keep_argument(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise DistillUsageError(f"--keep takes joint layer numbers separated by commas (e.g. 0,2,5); got "
                                f"{text!r}") from None


def _joint_layers(path: Path) -> int:
    """The parent's joint layer count, from its tensor names and shapes (no weights read yet)."""
    from ..dit.checkpoint import infer_params
    from ..dit.keys import official_refs
    from ..files.tensors import open_weights

    return infer_params(official_refs(path, open_weights(path, subfolder="transformer")), path).n_layers


def _run_layers(args) -> int:
    from ..dit.checkpoint import load_dit
    from ..files.fingerprint import fingerprint
    from ..training import compact, distributed

    if args.steps:
        raise DistillUsageError("--layers and --steps make different students: make the few-step student first "
                                "(distill --steps N), then its compact student (distill <its file> --layers K)")
    if args.latents is not None or args.student_trajectories or args.scale_weighted_loss:
        raise DistillUsageError("--latents, --student-trajectories and --scale-weighted-loss are guidance-stage "
                                "options; a compact student trains on its parent's own trajectories")
    mode = args.mode or "full"
    _check_prompt_source(args)
    parent_path = resolve_model("diffusion_models", args.teacher)
    n_layers = _joint_layers(parent_path)
    try:
        if args.keep is not None:
            keep = compact.checked_keep(_keep_argument(args.keep), n_layers)
            if args.layers is not None and args.layers != len(keep):
                raise ValueError(f"--layers {args.layers} but --keep names {len(keep)} layers; give one of them "
                                 f"or make them agree")
        else:
            compact.checked_count(args.layers, n_layers)
            keep = None
    except ValueError as error:
        raise DistillUsageError(str(error)) from None
    k = len(keep) if keep is not None else args.layers
    output = args.output or compact.default_output_path(parent_path, k)
    state_path = output.with_name(f"{output.stem}.training-state.pt")
    if output.exists() and not args.overwrite:
        raise DistillUsageError(f"{output} exists; choose another --output or pass --overwrite")
    if args.resume and not state_path.is_file():
        raise DistillUsageError(f"--resume needs {state_path} (written by --save-every)")
    if args.save_every < 0:
        raise DistillUsageError("--save-every must be 0 (never) or a number of iterations")
    try:
        config = compact.CompactConfig(
            keep=keep or tuple(range(k)), mode=mode, rank=args.rank, iterations=args.iterations,
            batch_size=args.batch_size, lr=args.lr if args.lr is not None else 1e-4,
            feature_weight=args.feature_weight, guidance_min=args.guidance_min, guidance_max=args.guidance_max,
            shift=args.shift, trajectory_steps=args.trajectory_steps, width=args.width, height=args.height,
            seed=args.seed, checkpointing=not args.no_checkpointing)
    except ValueError as error:
        raise DistillUsageError(str(error)) from None
    positives, negative = _training_prompts(args)

    job = distributed.start(args.device)
    try:
        parent = load_dit(parent_path, dtype=args.dtype, device=job.device)
        if keep is None:     # the rule: every process measures alike (same seed, same states)
            if args.resume:  # the state records the layers chosen when the run began
                import torch

                saved = torch.load(state_path, map_location="cpu", weights_only=True)["config"]["keep"]
                keep = tuple(saved)
            elif args.layer_rule == "even":
                keep = compact.evenly_spaced(n_layers, k)
            else:
                importance = compact.layer_importance(parent, positives, negative, config)
                keep = compact.most_important(importance, k)
                log.info("layer importance (output change when skipped): %s",
                         ", ".join(f"{i}: {v:.4g}" for i, v in enumerate(importance)))
            config = replace(config, keep=keep)
        log.info("distilling %s (%d joint layers) into a %d-layer student (layers %s, %s mode, feature weight %g, "
                 "%d prompts, %d process(es)) at %s", parent_path.name, n_layers, k, ",".join(map(str, keep)),
                 mode, args.feature_weight, len(positives), job.world_size, output)
        student = compact.compact_distill(parent, positives, negative, config, progress=not args.no_progress,
                                          job=job, state_path=state_path if args.save_every else None,
                                          save_every=args.save_every, resume=args.resume)
        if job.is_main:
            metadata = compact.compact_metadata(parent, keep, config, parent_path.name, fingerprint(parent_path))
            path = compact.save_compact(student, output, _save_dtype(args), metadata, overwrite=args.overwrite)
            print(f"wrote {path}: {k} of {n_layers} joint layers ({','.join(map(str, keep))})")
    finally:
        distributed.finish(job)
    return 0
