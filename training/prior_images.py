"""Prior preservation for LoRA training: images the base model itself draws for other prompts,
trained on beside the user's images so the LoRA keeps what the model already draws.

This is DreamBooth's prior-preservation loss (Ruiz et al., "DreamBooth: Fine Tuning Text-to-Image
Diffusion Models for Subject-Driven Generation", CVPR 2023, section 3.3): with only a few images of
a new concept a LoRA soon learns to draw them for every prompt; training at the same time on the
base model's own images of other prompts gives it a reason to leave those prompts alone.

``generate`` draws ``count`` images with the base model before any adapter is attached, prompt
``i % len(prompts)`` with seed ``seed + i``, at the model's own recorded sampler settings when its
file records them (else the given ones), and writes them as a ``metadata.jsonl`` dataset
(``lora_data.py``) into a folder of the feature cache named by a key over everything that
decides the images: a second run with the same model, prompts, count, seed, size and settings
finds the folder and draws nothing. The metadata file is written last, so a folder without it
(a stopped run) is finished: the images already there (each written whole, under a temporary
name first) are kept, the others drawn. The prior set is then an ordinary dataset: ``lora_inputs.prepare``
buckets and caches it like the user's images; a folder of images the user already has is used the
same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from ..files.atomic import atomic_path, write_text
from ..sampler_settings import SamplerSettings

log = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
# Bumped when the way prior images are drawn changes, so old folders are not reused.
PRIOR_VERSION = "1"


def settings_for(model, fallback: SamplerSettings) -> SamplerSettings:
    """The sampler settings prior images are drawn with: the model's own recorded ones when its file
    records them (a distilled student draws well only at those; what they leave out comes from
    ``fallback``), else ``fallback``."""
    from ..dit.own_settings import own_settings

    own = own_settings(model)
    return fallback if own is None else replace(fallback, steps=0).resolved(own)


def folder_key(model_id: str, prompts: tuple[str, ...], count: int, seed: int, size: int,
               settings: SamplerSettings) -> str:
    """The cache folder's name: a SHA-256 over the model files' fingerprints (``model_id``: DiT,
    text encoders and VAE), the prompts, how many images, the seeds, the size and the settings."""
    parts = {"version": PRIOR_VERSION, "model": model_id, "prompts": list(prompts), "count": count, "seed": seed,
             "size": size, "settings": asdict(settings)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def is_complete(folder: Path) -> bool:
    return (folder / METADATA).is_file()


def draw_png(model, positive, negative, settings: SamplerSettings, size: int, seed: int, decode: Callable,
             path: Path) -> None:
    """One square ``size`` image of ``positive`` drawn by ``model`` and written whole to ``path`` as PNG."""
    import numpy as np
    from PIL import Image

    from ..sampling.sample import sample

    latent = sample(model, positive, negative, settings, width=size, height=size, seed=seed)
    pixels = (decode(latent["samples"])[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
    with atomic_path(path) as partial:
        Image.fromarray(np.ascontiguousarray(pixels)).save(partial, format="PNG")


def generate(model, prompts: tuple[str, ...], count: int, folder: Path, conditioning: Callable[[str], list],
             decode: Callable, settings: SamplerSettings, size: int, seed: int, job, progress: bool = True) -> Path:
    """Draw ``count`` square ``size`` images of ``prompts`` (cycled) with ``model`` into ``folder``
    as a ``metadata.jsonl`` dataset, unless it is already complete; returns ``folder``.

    conditioning(text): the CONDITIONING of a prompt ("" is the negative); decode(latent (B, 16,
    h, w) raw) -> images (B, H, W, 3) in [0, 1]. With several processes each draws its share and
    the first writes the metadata once all are done."""
    import torch
    from tqdm import tqdm

    if is_complete(folder):
        log.info("prior images: %d from the cache (%s)", count, folder)
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    negative = conditioning("")
    mine = range(job.rank, count, job.world_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for index in tqdm(mine, desc="prior images", unit="image", disable=not (progress and job.is_main)):
            path = folder / "images" / f"{index:05d}.png"
            if path.is_file():   # drawn by a run that was stopped before the metadata
                continue
            draw_png(model, conditioning(prompts[index % len(prompts)]), negative, settings, size, seed + index,
                     decode, path)
    model.train(was_training)
    job.barrier()
    if job.is_main:
        lines = [json.dumps({"image": f"images/{i:05d}.png", "text": prompts[i % len(prompts)]})
                 for i in range(count)]
        write_text(folder / METADATA, "\n".join(lines) + "\n")
    job.barrier()
    return folder
