"""Building the embedded default model end to end: text side, autoencoder, Next-DiT, distilled
student, written in the layouts real NewBie files come in so inference takes the same paths.

| file (under the models folder)                                  | layout                                  |
| --------------------------------------------------------------- | --------------------------------------- |
| diffusion_models/NextDiT-embedded-shapes.pth                    | training checkpoint, `module.` prefixes |
| diffusion_models/NextDiT-embedded-shapes-distilled.safetensors  | `distill` output (guidance embedder)    |
| diffusion_models/NextDiT-embedded-shapes-distilled-4step.safetensors | `distill --steps 4` output, fp16     |
| diffusion_models/NextDiT-embedded-shapes-3layers.safetensors    | `distill --layers 3` output, fp16       |
| text_encoders/embedded-shapes-gemma3.safetensors                | ComfyUI single file + spiece_model      |
| text_encoders/embedded-shapes-jina.safetensors                  | ComfyUI single file + spiece_model      |
| vae/embedded-shapes-vae/                                        | diffusers AutoencoderKL folder          |
| vae/embedded-shapes-tiny-decoder.safetensors                    | `distill-decoder` output, fp16          |
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...dit.checkpoint import load_dit
from ...dit.model import NextDiT
from ...dit.own_settings import preview_metadata
from ...files.atomic import atomic_path
from ...files.fingerprint import fingerprint
from ...sampler_settings import DEFAULT_SHIFT, SamplerSettings
from ...text.conditioning import conditioning
from ...text.loading import load_text_encoders
from ...vae.latent_format import FLUX
from .. import compact
from ..compact import CompactConfig
from ..distill import DistillConfig, distill, save_student
from ..step_distill import StepDistillConfig, step_distill
from . import autoencoder as ae_training
from .adherence import score_image, summarise
from .dit_training import EMBEDDED_PARAMS, prepare_captions, train_dit
from .shapes import caption, held_out_scenes, render, training_scene
from .text_side import build_text_encoders, save_gemma_encoder, save_text_encoders
from .tiny_decoder import TINY_DECODER_CONFIG, TINY_DECODER_FILE, TINY_DECODER_SCENES, write_tiny_decoder

log = logging.getLogger(__name__)

DIT_FILE = "diffusion_models/NextDiT-embedded-shapes.pth"
STUDENT_FILE = "diffusion_models/NextDiT-embedded-shapes-distilled.safetensors"


def few_step_file(steps: int) -> str:
    """Where the N-step student goes (the name `distill --steps N` gives it)."""
    return f"diffusion_models/NextDiT-embedded-shapes-distilled-{steps}step.safetensors"


FEW_STEP_FILE = few_step_file(4)   # the shipped one
GEMMA_FILE = "text_encoders/embedded-shapes-gemma3.safetensors"
JINA_FILE = "text_encoders/embedded-shapes-jina.safetensors"
VAE_FOLDER = "vae/embedded-shapes-vae"
# What each Next-DiT file records for the sampler's defaults (steps 0, size 0): the settings
# check-embedded measures it with and the 64×64 training images.
TEACHER_SETTINGS = SamplerSettings(25, "euler", DEFAULT_SHIFT, cfg=4.0, cfg_trunc=1.0, resolution=64)
STUDENT_SETTINGS = SamplerSettings(25, "euler", DEFAULT_SHIFT, cfg=1.0, guidance=4.0, resolution=64)

@dataclass(frozen=True)
class TrainingPlan:
    ae_steps: int = 2500
    ae_finetune_steps: int = 300
    dataset_size: int = 24000
    dit_steps: int = 7000
    dit_batch: int = 64
    distill_iterations: int = 2000
    few_step_iterations: int = 600
    few_steps: int = 4               # the few-step student's N (other than 4: not shipped, for measurements)
    # 0: no tiny decoder stage (the default until a tiny decoder measures within a point of the full
    # one; TINY_DECODER_CONFIG.steps is the planned length).
    tiny_decoder_steps: int = 0
    tiny_decoder_scenes: int = TINY_DECODER_SCENES
    # the half-depth student (training/compact.py); 0: the stage is left out (the default until a
    # compact student measures within 3 points of the teacher; 500 was measured)
    compact_iterations: int = 0
    seed: int = 0

def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="step")

    def update(done: int, total: int, loss: float) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()
        if done == total:
            bar.close()
    return update

def train_autoencoder_stage(out: Path, plan: TrainingPlan):
    ae = ae_training.train_autoencoder(plan.ae_steps, seed=plan.seed, progress=_bar("autoencoder"))
    ae_training.fold_into_flux_format(ae, random.Random(plan.seed + 1))
    ae_training.finetune_decoder(ae, plan.ae_finetune_steps, progress=_bar("decoder after fold"))
    ae.save_pretrained(str(out / VAE_FOLDER), safe_serialization=True)
    return ae

def tiny_decoder_stage(out: Path, plan: TrainingPlan) -> None:
    """The autoencoder's tiny decoder (`distill-decoder` on rendered training scenes), as the
    pack's loader reads the autoencoder."""
    from ...vae.loading import load_vae

    config = replace(TINY_DECODER_CONFIG, steps=plan.tiny_decoder_steps)
    write_tiny_decoder(load_vae(out / VAE_FOLDER, dtype="fp32"), out / TINY_DECODER_FILE, config,
                       scenes=plan.tiny_decoder_scenes, seed=plan.seed, progress=_bar("tiny decoder"))

def reconstruction_adherence(reconstruct, count: int = 200) -> dict[str, float]:
    """The checker on an autoencoder's own reconstructions of held-out scenes; ``reconstruct`` maps
    uint8 [B, H, W, 3] images to their uint8 reconstructions."""
    scenes = held_out_scenes(count)
    images = np.stack([render(scene) for scene in scenes])
    rebuilt = np.concatenate([reconstruct(images[i:i + 50]) for i in range(0, count, 50)])
    return summarise([score_image(image, scene) for image, scene in zip(rebuilt, scenes)])

@torch.no_grad()
def encode_images(ae, scenes, batch: int = 64) -> torch.Tensor:
    """Normalised latents (the DiT's space) of the rendered scenes, through the encoder mean."""
    latents = []
    for start in range(0, len(scenes), batch):
        images = np.stack([render(scene) for scene in scenes[start:start + batch]])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents.append(FLUX.from_raw(ae.encode(x).latent_dist.mean))
    return torch.cat(latents)

def preview_projection(vae, count: int = 600, seed: int = 0) -> tuple[list, list]:
    """Latent → RGB factors (16×3) and bias for previews of this autoencoder's latents: least squares
    from its normalised latents of ``count`` training scenes to the scenes downscaled 8× in [-1, 1].
    On 200 held-out scenes they miss by 0.22 (mean absolute, on [-1, 1]); FLUX's factors by 0.71."""
    rng = random.Random(seed)
    latents, targets = [], []
    for start in range(0, count, 100):
        scenes = [training_scene(rng) for _ in range(min(100, count - start))]
        pixels = torch.tensor(np.stack([render(scene) for scene in scenes]), dtype=torch.float32) / 255
        with torch.no_grad():
            latents.append(FLUX.from_raw(vae.encode(pixels)).permute(0, 2, 3, 1).reshape(-1, 16))
        small = torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2) * 2 - 1, 8)
        targets.append(small.permute(0, 2, 3, 1).reshape(-1, 3))
    inputs = torch.cat(latents)
    solution = torch.linalg.lstsq(torch.cat([inputs, torch.ones(len(inputs), 1)], 1), torch.cat(targets)).solution
    return solution[:16].tolist(), solution[16].tolist()


def dit_metadata(out: Path, settings: SamplerSettings) -> dict[str, str]:
    """What a Next-DiT file of the family records: its sampling settings and the previews' projection
    for the autoencoder in ``out``."""
    from ...vae.loading import load_vae

    return {**settings.to_metadata(),
            **preview_metadata(*preview_projection(load_vae(out / VAE_FOLDER, dtype="fp32")))}


def save_training_checkpoint(model, path: Path, plan: TrainingPlan) -> None:
    """As the official trainer saves under DDP: every key `module.`-prefixed, args alongside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    args = argparse.Namespace(**dataclasses.asdict(plan), params=repr(model.params))
    with atomic_path(path) as partial:
        torch.save({"model": state, "args": args, "metadata": dit_metadata(path.parents[1], TEACHER_SETTINGS)},
                   partial)


class _StageClock:
    """Logs each stage's wall time and keeps them for the closing summary."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        log.info("%s: %.0f s", name, self.seconds[name])

def train_embedded(out: Path, plan: TrainingPlan = TrainingPlan(), resume: bool = False) -> dict[str, float]:
    """Train every stage into ``out``; returns each stage's seconds. With ``resume``, a stage whose
    files already exist in ``out`` is loaded instead of retrained (delete a file to redo its stage)."""
    from diffusers import AutoencoderKL

    out = Path(out)
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    clock = _StageClock()

    def done(*names: str) -> bool:
        return resume and all((out / name).exists() for name in names)

    with clock("text encoders"):
        if not done(GEMMA_FILE, JINA_FILE):
            gemma, jina = build_text_encoders(plan.seed)
            save_text_encoders(gemma, jina, out / GEMMA_FILE, out / JINA_FILE)
        text_encoders = load_text_encoders(out / GEMMA_FILE, out / JINA_FILE)   # as inference reads them

    with clock("autoencoder"):
        if done(VAE_FOLDER):
            ae = AutoencoderKL.from_pretrained(str(out / VAE_FOLDER)).eval()
        else:
            ae = train_autoencoder_stage(out, plan)
    log.info("autoencoder reconstructions of held-out scenes: %s",
             reconstruction_adherence(lambda images: ae_training.reconstruct(ae, images)))
    with clock("tiny decoder"):
        if plan.tiny_decoder_steps and not done(TINY_DECODER_FILE):
            tiny_decoder_stage(out, plan)
    if done(DIT_FILE, STUDENT_FILE):
        with clock("few-step student"):
            if not done(few_step_file(plan.few_steps)):
                few_step_student(text_encoders, training_set(plan)[1], out, plan)
        with clock("compact student"):
            if plan.compact_iterations and not done(COMPACT_FILE):
                compact_student(text_encoders, training_set(plan)[1], out, plan, resume)
        return clock.seconds

    with clock("dataset"):
        scenes, captions = training_set(plan)
        latents = encode_images(ae, scenes)
        prepared = prepare_captions(text_encoders, captions)
        empty = prepare_captions(text_encoders, [""])

    with clock("next-dit"):
        if done(DIT_FILE):
            teacher = load_dit(out / DIT_FILE, dtype="fp32")
        else:
            teacher, gemma = train_dit(latents, prepared, empty, text_encoders.gemma.model,
                                       plan.dit_steps, batch=plan.dit_batch, seed=plan.seed,
                                       progress=_bar("next-dit"))
            # Gemma first: a Next-DiT file on disk always has its trained Gemma beside it.
            save_gemma_encoder(gemma, text_encoders.gemma.tokenizer, out / GEMMA_FILE)
            save_training_checkpoint(teacher, out / DIT_FILE, plan)
            text_encoders = load_text_encoders(out / GEMMA_FILE, out / JINA_FILE)

    with clock("distilled student"):
        if not done(STUDENT_FILE):
            distill_student(teacher, text_encoders, captions, out, plan)
    with clock("few-step student"):
        if not done(few_step_file(plan.few_steps)):
            few_step_student(text_encoders, captions, out, plan)
    with clock("compact student"):
        if plan.compact_iterations and not done(COMPACT_FILE):
            compact_student(text_encoders, captions, out, plan, resume)
    log.info("stage seconds: %s; total %.0f s", {k: round(v) for k, v in clock.seconds.items()},
             sum(clock.seconds.values()))
    return clock.seconds

def training_set(plan: TrainingPlan) -> tuple[list, list[str]]:
    """The training scenes and their captions (fixed by the plan's seed)."""
    rng = random.Random(plan.seed + 2)
    scenes = [training_scene(rng) for _ in range(plan.dataset_size)]
    return scenes, [caption(scene, rng) for scene in scenes]


def _conditionings(text_encoders, texts: list[str]) -> list:
    return [conditioning(text_encoders.encode(text, text), text, text) for text in texts]


def distill_student(teacher, text_encoders, captions, out: Path, plan: TrainingPlan) -> None:
    count = min(len(captions), 2000)
    # LoRA rank 16, scale-weighted loss and on-policy states: the settings the README's
    # measurements favour (each against plain MSE, teacher trajectories, full fine-tuning, other
    # ranks, learning rates and guidance ranges); 2000 iterations are what the hour leaves.
    config = DistillConfig(mode="lora", iterations=plan.distill_iterations, batch_size=32, lr=1e-3,
                           guidance_min=1.0, guidance_max=6.0, width=64, height=64, seed=plan.seed,
                           scale_weighted_loss=True, student_trajectories=True)
    # Data-free states (distill's default): trajectories the student samples itself, labelled by
    # the teacher's CFG velocity, so it trains on the states it meets when sampling, drift included.
    student = distill(teacher, _conditionings(text_encoders, captions[:count]), _conditionings(text_encoders, [""])[0],
                      config)
    save_student(student, out / STUDENT_FILE, overwrite=True, metadata=dit_metadata(out, STUDENT_SETTINGS))

# Guidance 4. The 4-step student fits each of its steps to the teacher's CFG path over it (16 Euler
# steps in all; "segment" from the guidance-distilled student); fewer steps halve from it in
# progressive rounds. The README's comparison favours these settings.
FEW_STEP_CONFIG = StepDistillConfig(steps=4, method="segment", teacher_steps=16, mode="lora", rank=16,
                                    batch_size=32, lr=1e-3, guidance_min=4.0, guidance_max=4.0, width=64, height=64)


def few_step_student(text_encoders, captions, out: Path, plan: TrainingPlan) -> None:
    """The 4-step student of the guidance-distilled student, learning the teacher's CFG paths, as
    `distill NextDiT-embedded-shapes-distilled.safetensors --steps 4 --step-method segment
    --teacher-steps 16 --cfg-teacher NextDiT-embedded-shapes.pth` makes it; with plan.few_steps 2 or
    1 also the progressive rounds from it (`distill ...-4step.safetensors --steps N --start-steps 4`).
    In fp16 (the embedded folder stays small); every student is written."""
    config = replace(FEW_STEP_CONFIG, iterations=plan.few_step_iterations, seed=plan.seed)
    positives = _conditionings(text_encoders, captions[:2000])

    def save(student, steps: int, method: str, targets: str) -> None:
        settings = replace(config.own_settings(), steps=steps, resolution=TEACHER_SETTINGS.resolution)
        save_student(student, out / few_step_file(steps), dtype=torch.float16, overwrite=True,
                     metadata={"nextdit_distilled": "guidance+steps", "teacher": Path(STUDENT_FILE).name,
                               "step_method": method, "step_targets": targets, **dit_metadata(out, settings)})

    if not (out / few_step_file(4)).exists():
        student = step_distill(load_dit(out / STUDENT_FILE, dtype="fp32"), positives, config,
                               cfg_teacher=load_dit(out / DIT_FILE, dtype="fp32"),
                               negative=_conditionings(text_encoders, [""])[0])
        save(student, 4, config.method, f"CFG of {Path(DIT_FILE).name}")
    if plan.few_steps < 4:
        rounds = replace(config, method="progressive", steps=plan.few_steps, start_steps=4)
        targets = f"progressive rounds from {few_step_file(4)}"
        student = step_distill(load_dit(out / few_step_file(4), dtype="fp32"), positives, rounds,
                               on_round=lambda s, steps: save(s, steps, "progressive", targets))
        save(student, plan.few_steps, "progressive", targets)


COMPACT_FILE = "diffusion_models/NextDiT-embedded-shapes-3layers.safetensors"
# Half the teacher's 6 joint layers, full fine-tuning, feature weight 1, the layers chosen by their
# measured importance (the README's Compact students compares the rules and feature weight 0).
COMPACT_CONFIG = CompactConfig(keep=(0, 1, 2), mode="full", batch_size=16, lr=3e-4, feature_weight=1.0,
                               guidance_min=1.0, guidance_max=6.0, width=64, height=64)


def compact_student(text_encoders, captions, out: Path, plan: TrainingPlan, resume: bool = False,
                    config: CompactConfig | None = None, path: Path | None = None, rule: str = "importance") -> None:
    """The half-depth student of the teacher, as `distill NextDiT-embedded-shapes.pth --layers 3
    --mode full --lr 3e-4 --batch-size 16 --iterations 500 --guidance-max 6 --width 64 --height 64` makes it, in fp16;
    its training state (every 100 iterations) lets ``resume`` continue a stopped run."""
    config = replace(config or COMPACT_CONFIG, iterations=plan.compact_iterations, seed=plan.seed)
    path = Path(path or out / COMPACT_FILE)
    state = path.with_name(f"{path.stem}.training-state.pt")
    teacher = load_dit(out / DIT_FILE, dtype="fp32")
    positives = _conditionings(text_encoders, captions[:2000])
    negative = _conditionings(text_encoders, [""])[0]
    k = len(config.keep)
    if resume and state.exists():
        keep = tuple(torch.load(state, map_location="cpu", weights_only=True)["config"]["keep"])
    elif rule == "even":
        keep = compact.evenly_spaced(teacher.params.n_layers, k)
    else:
        importance = compact.layer_importance(teacher, positives, negative, config,
                                              iterations=min(16, config.iterations))
        log.info("layer importance: %s", ", ".join(f"{i}: {v:.4f}" for i, v in enumerate(importance)))
        keep = compact.most_important(importance, k)
    config = replace(config, keep=keep)
    student = compact.compact_distill(teacher, positives, negative, config, state_path=state, save_every=100,
                                      resume=resume and state.exists())
    metadata = compact.compact_metadata(teacher, keep, config, Path(DIT_FILE).name, fingerprint(out / DIT_FILE))
    compact.save_compact(student, path, dtype=torch.float16, metadata=metadata, overwrite=True)
    state.unlink(missing_ok=True)


def embedded_files_present(models_dir: Path) -> bool:
    return all((Path(models_dir) / name).exists() for name in (DIT_FILE, GEMMA_FILE, JINA_FILE, VAE_FOLDER))

def write_untrained(out: Path, seed: int = 0) -> None:
    """The embedded model's files with random (untrained) weights: same architecture, layouts and
    names, so the whole pipeline runs before ``train-embedded`` has produced real weights."""

    out = Path(out)
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    gemma, jina = build_text_encoders(seed)
    save_text_encoders(gemma, jina, out / GEMMA_FILE, out / JINA_FILE)
    torch.manual_seed(seed)
    ae_training.build_autoencoder().save_pretrained(str(out / VAE_FOLDER), safe_serialization=True)
    model = NextDiT(EMBEDDED_PARAMS)
    for module in model.modules():  # random but non-degenerate: open gates, visible output
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.05)
    save_training_checkpoint(model, out / DIT_FILE, TrainingPlan(seed=seed))
