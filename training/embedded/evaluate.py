"""Adherence of the embedded model on held-out prompts, through the pack's own loaders, sampler
and VAE (the paths every real model takes)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...dit.checkpoint import load_dit
from ...lora.apply import load_lora
from ...sampling.sample import sample
from ...text.conditioning import conditioning
from ...text.loading import load_text_encoders
from ...vae.loading import load_vae
from .adherence import score_image, summarise
from .pipeline import DIT_FILE, GEMMA_FILE, JINA_FILE, STUDENT_FILE, VAE_FOLDER
from .shapes import Scene, held_out_scenes, xml_caption

@dataclass(frozen=True)
class Setting:
    name: str
    student: bool
    cfg: float
    guidance: float

SETTINGS = (
    Setting("teacher, CFG 1 (no guidance)", False, 1.0, 0.0),
    Setting("teacher, CFG 4", False, 4.0, 0.0),
    Setting("distilled student, CFG 1, guidance 4", True, 1.0, 4.0),
)

class EmbeddedModels:
    def __init__(self, models_dir: Path):

        models_dir = Path(models_dir)
        self.teacher = load_dit(models_dir / DIT_FILE, dtype="fp32")
        student_path = models_dir / STUDENT_FILE
        self.student = load_dit(student_path, dtype="fp32") if student_path.exists() else None
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
             solver: str = "euler") -> np.ndarray:
    """One 64×64 image as uint8 [H, W, 3] for an XML caption (a Scene is captioned in XML)."""

    text = xml_caption(scene_or_text) if isinstance(scene_or_text, Scene) else scene_or_text
    model = models.student if setting.student else models.teacher
    latent = sample(model, models.conditioning(text), models.conditioning(""), 64, 64, seed, steps, solver,
                    6.0, setting.cfg, 0.0, 1.0, guidance=setting.guidance)
    image = models.vae.decode(latent["samples"])[0]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

def adherence(models: EmbeddedModels, setting: Setting, count: int = 200, steps: int = 25,
              seed: int = 1234, scenes: list[Scene] | None = None) -> dict[str, float]:
    """The checker's figures on ``scenes`` (default: ``count`` of the base held-out scenes)."""
    scenes = held_out_scenes(count, seed) if scenes is None else scenes
    scores = [score_image(generate(models, scene, setting, seed=i, steps=steps), scene)
              for i, scene in enumerate(scenes)]
    return summarise(scores)
