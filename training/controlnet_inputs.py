"""The control images of a ControlNet training set, beside the images train-lora reads.

Naming rule: the control image of ``NAME.png`` (any image suffix, any dataset layout of
``training/lora_data.py``) is ``NAME.control.png`` (again any image suffix) in the same folder.
Such files are never training images themselves. Instead of files, ``derive="canny"`` makes each
control image from its training image with Canny edges (``controlnet/canny.py``, core ComfyUI's
Canny node's defaults).

Each control image is fitted to its training image's bucket exactly as the image is, VAE-encoded
and kept in the feature cache. An item whose control image is missing or unreadable is reported
and left out. With several processes each encodes its share and all exchange the keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..controlnet.canny import canny
from .buckets import fit
from .distributed import Distributed
from .lora_data import IMAGE_SUFFIXES, Skipped, UnreadableImage, decode_rgb
from .lora_inputs import Encoders, TrainingSet

CONTROL_TAG = ".control"
DERIVED = ("canny",)
CANNY_THRESHOLDS = (0.4, 0.8)   # core's Canny node defaults


def is_control_image(path: Path) -> bool:
    return Path(path.stem).suffix == CONTROL_TAG


def control_image_of(image: Path) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (image.with_name(f"{image.stem}{CONTROL_TAG}{suffix}"),
                          image.with_name(f"{image.stem}{CONTROL_TAG}{suffix.upper()}")):
            if candidate.is_file():
                return candidate
    return None


@dataclass
class ControlSet:
    """The training set of the images that have a control image, and each one's control latent key."""
    data: TrainingSet
    control_keys: list[str]

    def control_latents(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([self.data.cache.latent(self.control_keys[i]) for i in indices])


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]   # (1, H, W, 3)


def _control_latent(item, derive: str | None, data: TrainingSet, encoders: Encoders) -> str | Skipped:
    cache = data.cache
    if derive is None:
        source = control_image_of(item.image)
        if source is None:
            return Skipped(item.image, f"no control image ({item.image.stem}{CONTROL_TAG}.png beside it)")
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    else:
        source = item.image
        digest = f"{derive}:{CANNY_THRESHOLDS}:" + hashlib.sha256(item.image.read_bytes()).hexdigest()
    key = cache.latent_key(digest, item.bucket)
    if cache.has_latent(key):
        return key
    try:
        image = fit(decode_rgb(source.read_bytes()), item.bucket)
    except (OSError, UnreadableImage) as error:
        return Skipped(source, f"control image: {error}")
    pixels = _pixels(image)
    if derive == "canny":
        pixels = canny(pixels.movedim(-1, 1), *CANNY_THRESHOLDS).repeat(1, 3, 1, 1).movedim(1, -1)
    cache.save_latent(key, encoders.vae.encode(pixels)[0])
    return key


def with_controls(data: TrainingSet, encoders: Encoders, job: Distributed, derive: str | None = None) -> ControlSet:
    """The items of ``data`` that have a control image (the others move to ``data.skipped``), with
    their control latents cached. Control images listed as skipped training images are dropped
    from the report: they are not training images."""
    if derive is not None and derive not in DERIVED:
        raise ValueError(f"--control must be one of {', '.join(DERIVED)}; got {derive!r}")
    mine = {index: _control_latent(data.items[index], derive, data, encoders)
            for index in range(job.rank, len(data.items), job.world_size)}
    results = {}
    for share in job.gather(mine):
        results.update(share)
    items, keys, skipped = [], [], [s for s in data.skipped if not is_control_image(s.path)]
    for index, item in enumerate(data.items):
        if is_control_image(item.image):
            continue
        result = results[index]
        if isinstance(result, Skipped):
            skipped.append(result)
        else:
            items.append(item)
            keys.append(result)
    data.items, data.skipped = items, skipped
    return ControlSet(data, keys)
