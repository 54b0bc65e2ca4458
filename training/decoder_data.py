"""The images a tiny decoder is distilled on, and the autoencoder's latents and decodes of them.

The folder is read as train-lora reads a dataset (``metadata.jsonl`` / ``metadata.csv`` when present,
``training/lora_data.py``), except that captions are not needed: without a metadata file every image
under the folder is used (hidden folders left out). Each image has its shorter side resized to
``size`` and is centre-cropped to ``size``×``size``; an image that cannot be read or whose shorter
side is below ``size`` is reported and skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .lora_data import IMAGE_SUFFIXES, Skipped, UnreadableImage, decode_rgb, scan_dataset
from .tiny_decoder import DecoderData

log = logging.getLogger(__name__)


def list_images(folder: str | Path) -> tuple[list[Path], list[Skipped]]:
    """The image files of the dataset folder (sorted) and the entries left out with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    if (folder / "metadata.jsonl").is_file() or (folder / "metadata.csv").is_file():
        scan = scan_dataset(folder)
        return [item.image for item in scan.items], scan.skipped
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return images, []


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: shorter side resized to ``size``, centre crop. UnreadableImage for a
    file that cannot be read or is too small."""
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableImage(f"cannot be read ({error.strerror or error})") from None
    image = decode_rgb(data)
    width, height = image.size
    if min(width, height) < size:
        raise UnreadableImage(f"too small: {width}x{height} (the shorter side must be at least {size} px)")
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    if resized != (width, height):
        image = image.resize(resized, Image.Resampling.LANCZOS)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_images(folder: str | Path, size: int) -> tuple[np.ndarray, list[Path], list[Skipped]]:
    """uint8 [N, size, size, 3] of the usable images, their paths, and what was skipped and why."""
    paths, skipped = list_images(folder)
    images, used = [], []
    for path in paths:
        try:
            images.append(load_image(path, size))
            used.append(path)
        except UnreadableImage as error:
            skipped.append(Skipped(path, str(error)))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, used, skipped


@torch.no_grad()
def autoencoder_targets(vae, images: np.ndarray, batch: int = 16, progress=None) -> DecoderData:
    """The autoencoder's normalised latents of ``images`` (uint8 [N,H,W,3]) and its decodes of them:
    ``vae`` is a ``NextDiTVAE`` with an encoder; the decode is the pack's (clamped to [0, 1])."""
    latents, targets = [], []
    for start in range(0, len(images), batch):
        pixels = torch.from_numpy(images[start:start + batch]).float() / 255
        raw = vae.encode(pixels)
        decoded = vae.decode(raw)
        latents.append(vae.latent_format.from_raw(raw))
        targets.append((decoded * 255).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous())
        if progress is not None:
            progress(min(start + batch, len(images)), len(images))
    return DecoderData(torch.cat(latents), torch.cat(targets))

