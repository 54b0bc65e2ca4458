"""Adherence of the embedded model on held-out prompts, through the pack's own loaders, sampler
and VAE (the paths every real model takes)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...dit.checkpoint import load_dit
from ...lora.apply import load_lora
from ...sampler_settings import SamplerSettings
from ...sampling.sample import SamplingReport, sample
from ...text.conditioning import conditioning
from ...text.loading import load_text_encoders
from ...vae.loading import load_vae
from .adherence import object_present, score_image, summarise
from .pipeline import DIT_FILE, FEW_STEP_FILE, GEMMA_FILE, JINA_FILE, STUDENT_FILE, VAE_FOLDER
from .shapes import Scene, held_out_scenes, render, xml_caption

# The evaluation's sampler: Euler on the shifted grid, CFG on every step; the step count is the
# evaluation's (steps None) unless a setting asks for the model's own settings (steps 0).
EVALUATION = SamplerSettings(steps=25, solver="euler", cfg=1.0, cfg_trunc=1.0)


@dataclass(frozen=True)
class Setting:
    name: str
    model: str                  # "teacher", "student" (guidance-distilled) or "few-step"
    sampler: SamplerSettings    # steps None-like: replaced by the evaluation's step count unless 0

    def settings(self, steps: int) -> SamplerSettings:
        return self.sampler if self.sampler.steps == 0 else replace(self.sampler, steps=steps)


SETTINGS = (
    Setting("teacher, CFG 1 (no guidance)", "teacher", EVALUATION),
    Setting("teacher, CFG 4", "teacher", replace(EVALUATION, cfg=4.0)),
    Setting("distilled student, CFG 1, guidance 4", "student", replace(EVALUATION, guidance=4.0)),
    Setting("4-step student (its own settings: 4 Euler steps, guidance 4)", "few-step", replace(EVALUATION, steps=0)),
)
# The step cache on the teacher at CFG 4: the evaluations it skips and what they cost.
CACHE_THRESHOLDS = (0.0, 0.05, 0.1, 0.2)


class EmbeddedModels:
    def __init__(self, models_dir: Path):
        models_dir = Path(models_dir)
        self.teacher = load_dit(models_dir / DIT_FILE, dtype="fp32")
        self.student, self.few_step = (load_dit(models_dir / name, dtype="fp32") if (models_dir / name).exists()
                                       else None for name in (STUDENT_FILE, FEW_STEP_FILE))
        self.text = load_text_encoders(models_dir / GEMMA_FILE, models_dir / JINA_FILE)
        self.vae = load_vae(models_dir / VAE_FOLDER, dtype="fp32")

    def conditioning(self, text: str):
        return conditioning(self.text.encode(text, text), text, text)

    def with_lora(self, path: Path, strength: float = 1.0) -> "EmbeddedModels":
        """The same models with the LoRA at ``path`` on the teacher (through NextDiT LoRA Loader's code)."""
        patched = copy.copy(self)
        patched.teacher = load_lora(self.teacher, path, strength)[0]
        return patched


def generate(models: EmbeddedModels, scene_or_text, setting: Setting, seed: int, steps: int = 25,
             report: SamplingReport | None = None) -> np.ndarray:
    """One 64×64 image as uint8 [H, W, 3] for an XML caption (a Scene is captioned in XML)."""
    text = xml_caption(scene_or_text) if isinstance(scene_or_text, Scene) else scene_or_text
    model = getattr(models, setting.model.replace("-", "_"))
    latent = sample(model, models.conditioning(text), models.conditioning(""), setting.settings(steps),
                    width=64, height=64, seed=seed, report=report)
    image = models.vae.decode(latent["samples"])[0]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def adherence(models: EmbeddedModels, setting: Setting, count: int = 200, steps: int = 25,
              seed: int = 1234, scenes: list[Scene] | None = None) -> dict[str, float]:
    """The checker's figures on ``scenes`` (default: ``count`` of the base held-out scenes); with a
    step cache also ``skipped`` (% of evaluations it skipped)."""
    scenes = held_out_scenes(count, seed) if scenes is None else scenes
    reports = [SamplingReport() for _ in scenes]
    scores = [score_image(generate(models, scene, setting, seed=i, steps=steps, report=report), scene)
              for i, (scene, report) in enumerate(zip(scenes, reports))]
    figures = summarise(scores)
    if setting.sampler.step_cache > 0:
        skipped, evaluations = (sum(getattr(r.cache, name) for r in reports) for name in ("skipped", "evaluations"))
        figures["skipped"] = 100.0 * skipped / evaluations
    return figures


def cell_mask(obj, size: int = 64, factor: int = 8) -> torch.Tensor:
    """A (1, size, size) noise_mask over the object's grid cell, widened to whole latent pixels
    (a cell is 2.7 latent pixels wide; a partly covered latent pixel would be only partly
    regenerated)."""
    mask = torch.zeros(1, size, size)
    top, bottom = obj.row * size // 3, (obj.row + 1) * size // 3
    left, right = obj.column * size // 3, (obj.column + 1) * size // 3
    top, left = top // factor * factor, left // factor * factor
    bottom, right = -(-bottom // factor) * factor, -(-right // factor) * factor
    mask[:, top:bottom, left:right] = 1.0
    return mask


def inpaint_adherence(models: EmbeddedModels, count: int = 100, steps: int = 25, cfg: float = 4.0,
                      seed: int = 4321) -> dict[str, dict[str, float]]:
    """Inpainting on held-out scenes of two or three objects: the scene without its last object is
    rendered and encoded, that object's cell masked, and the teacher samples the whole scene's
    caption there. Scores the added object, the objects outside the mask, and (as a check) the
    masked cell of the input image, where the checker must find nothing."""
    scenes = [scene for scene in held_out_scenes(3 * count, seed) if len(scene.objects) >= 2][:count]
    added, kept, before = [], [], []
    for index, scene in enumerate(scenes):
        target, others = scene.objects[-1], Scene(scene.objects[:-1], scene.background)
        pixels = torch.tensor(render(others), dtype=torch.float32)[None] / 255
        latent = {"samples": models.vae.encode(pixels), "noise_mask": cell_mask(target)}
        out = sample(models.teacher, models.conditioning(xml_caption(scene)), models.conditioning(""),
                     replace(EVALUATION, steps=steps, cfg=cfg), width=64, height=64, seed=index, latent=latent)
        image = (models.vae.decode(out["samples"])[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        scores = score_image(image, scene)
        added.append(scores[-1:])
        kept.append(scores[:-1])
        before.append(score_image(render(others), Scene((target,), scene.background)))
    return {"object added in the masked cell": summarise(added),
            "objects outside the mask": summarise(kept),
            "the masked cell before (checker check: empty)": summarise(before)}


# ---- steering: NAG and prompt weights ----------------------------------------------------------

# NAG rows of check-embedded --nag, the empty negative: (setting index in SETTINGS, scale, tau,
# alpha, start_percent, end_percent).
NAG_ROWS = ((0, 2.0, 2.5, 0.25, 0.0, 1.0), (0, 3.0, 2.5, 0.25, 0.0, 0.4), (2, 2.0, 2.5, 0.25, 0.0, 1.0),
            (2, 4.0, 2.5, 0.25, 0.0, 1.0), (3, 2.0, 2.5, 0.25, 0.0, 1.0), (3, 4.0, 2.5, 0.25, 0.0, 1.0))


def with_nag_on(models: EmbeddedModels, setting: Setting, scale: float, tau: float, alpha: float,
                start: float = 0.0, end: float = 1.0, negative: str = "") -> EmbeddedModels:
    """The same models with NextDiT NAG's settings on the setting's model (negative: its prompt)."""
    from ...steering.nag import NAGSettings, with_nag

    patched = copy.copy(models)
    attribute = setting.model.replace("-", "_")
    settings = NAGSettings(models.conditioning(negative), scale, tau, alpha, start, end)
    setattr(patched, attribute, with_nag(getattr(models, attribute), settings))
    return patched


def weight_presence(models: EmbeddedModels, weights=(0.0, 0.25, 0.5, 1.0), count: int = 100, steps: int = 25,
                    cfg: float = 4.0, seed: int = 5678, leave_out_below: float | None = None) -> dict:
    """Prompt weights on held-out scenes of two or three objects: the last object's
    ``<character_N>`` block wrapped as ``(block:w)``. Per weight: the share of images where
    anything is drawn in that object's cell (``present``), and the other objects' figures;
    ``unweighted`` the same for the caption without syntax (the teacher at ``cfg``, Euler)."""
    from ...text.weights import weighted_encoding

    scenes = [scene for scene in held_out_scenes(3 * count, seed) if len(scene.objects) >= 2][:count]
    settings = replace(EVALUATION, steps=steps, cfg=cfg)
    negative = models.conditioning("")
    results, latents = {}, {}
    for weight in (None, *weights):
        present, others, latents[weight] = [], [], []
        for index, scene in enumerate(scenes):
            blocks = xml_caption(scene).split("\n\n")
            last = len(scene.objects) - 1
            if weight is not None:
                blocks[last] = f"({blocks[last]}:{weight:g})"
            cond = weighted_encoding(models.text, "\n\n".join(blocks), "", leave_out_below)[0]
            latent = sample(models.teacher, cond, negative, settings, width=64, height=64, seed=index)
            latents[weight].append(latent["samples"])
            image = (models.vae.decode(latent["samples"])[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            present.append(object_present(image, scene.objects[last]))
            others.append(score_image(image, Scene(scene.objects[:last], scene.background)))
        results["unweighted" if weight is None else weight] = {"present": 100.0 * sum(present) / len(present),
                                                                **summarise(others)}
    if 1.0 in weights:   # (block:1) must be the caption without syntax, bit for bit
        results["weight 1 bit-identical"] = all(torch.equal(a, b) for a, b in zip(latents[None], latents[1.0]))
    return results


# ---- tiny decoders ------------------------------------------------------------------------------

def _decode_uint8(vae, latent: torch.Tensor) -> np.ndarray:
    return (vae.decode(latent)[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def decoder_comparison(models, tiny, count: int = 200, steps: int = 25) -> tuple[dict, dict[str, float]]:
    """The checker's figures for images decoded by the full autoencoder and by ``tiny`` from the same
    latents: the autoencoder's latents of held-out scenes, and the samples of the teacher (CFG 4) and
    of the students the models folder has (the seeds and settings of check-embedded's rows). Also the
    seconds per image of each decoder, timed side by side over every latent (one image at a time, as
    the pack decodes; the two alternate so both see the same machine load)."""
    import time

    scenes = held_out_scenes(count)
    sets = {"autoencoder latents of the held-out scenes":
            [models.vae.encode(torch.tensor(render(scene), dtype=torch.float32)[None] / 255) for scene in scenes]}
    negative = models.conditioning("")
    for setting in SETTINGS[1:]:   # teacher CFG 4, the guidance-distilled and the 4-step student
        model = getattr(models, setting.model.replace("-", "_"))
        if model is None:
            continue
        sets[setting.name] = [sample(model, models.conditioning(xml_caption(scene)), negative, setting.settings(steps),
                                     width=64, height=64, seed=index)["samples"] for index, scene in enumerate(scenes)]
    rows, seconds = {}, {"full": 0.0, "tiny": 0.0}
    for name, latents in sets.items():
        for label, vae in (("full", models.vae), ("tiny", tiny)):
            images = []
            for latent in latents:
                start = time.perf_counter()
                images.append(_decode_uint8(vae, latent))
                seconds[label] += time.perf_counter() - start
            rows[f"{name}, {label} decoder"] = summarise([score_image(i, s) for i, s in zip(images, scenes)])
    decoded = sum(len(latents) for latents in sets.values())
    return rows, {label: total / decoded for label, total in seconds.items()}
