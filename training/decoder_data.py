"""The images a tiny decoder is distilled on, and the autoencoder's latents and decodes of them.

The folder is read as train-lora reads a dataset (``metadata.jsonl`` / ``metadata.csv`` when present,
``training/lora_data.py``), except that captions are not needed: without a metadata file every image
under the folder is used (hidden folders left out). Each image has its shorter side resized to
``size`` and is centre-cropped to ``size``×``size``; an image that cannot be read or whose shorter
side is below ``size`` is reported and skipped.

Latents can be added (``--latents``): ComfyUI Save Latent files, e.g. of the model's own samples, so
the tiny decoder also learns the latents a sampler makes, which the autoencoder's encoder never
produces exactly (on the embedded model that lifted its figures on the models' samples; README).
Each is centre-cropped to the training size in latent pixels, and the target is the autoencoder's
decode of the cropped latent.
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
    return files_under(folder, IMAGE_SUFFIXES), []


def files_under(folder: Path, suffixes) -> list[Path]:
    """The files under ``folder`` whose suffix is one of ``suffixes`` (any case), sorted, hidden files
    and folders left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


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
def autoencoder_targets(vae, images: np.ndarray, batch: int = 16) -> DecoderData:
    """The autoencoder's normalised latents of ``images`` (uint8 [N,H,W,3]) and its decodes of them:
    ``vae`` is a ``NextDiTVAE`` with an encoder; the decode is the pack's (clamped to [0, 1])."""
    raw = [vae.encode(torch.from_numpy(images[start:start + batch]).float() / 255)
           for start in range(0, len(images), batch)]
    return latent_targets(vae, torch.cat(raw), batch)


@torch.no_grad()
def latent_targets(vae, raw: torch.Tensor, batch: int = 16) -> DecoderData:
    """Raw latents [N,C,h,w] normalised, and the autoencoder's decodes of them as uint8 [N,3,H,W]."""
    latents, targets = [], []
    for start in range(0, len(raw), batch):
        chunk = raw[start:start + batch]
        latents.append(vae.latent_format.from_raw(chunk))
        targets.append((vae.decode(chunk) * 255).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous())
    return DecoderData(torch.cat(latents), torch.cat(targets))


def joined(*parts: DecoderData | None) -> DecoderData:
    """One dataset of the given parts' rows, in order (None: left out)."""
    parts = [part for part in parts if part is not None]
    return DecoderData(torch.cat([p.latents for p in parts]), torch.cat([p.targets for p in parts]))


# ComfyUI's Load Latent multiplies files written before its "latent_format_version_0" marker (SD1
# latents scaled by 0.18215) by 1 / 0.18215; the same rule reads them here.
LEGACY_LATENT_SCALE = 1.0 / 0.18215


def load_latents(folder: str | Path, channels: int, size: int) -> tuple[torch.Tensor, list[Path], list[Skipped]]:
    """The raw latents in ComfyUI Save Latent files (``*.latent`` under ``folder``, read as core's Load
    Latent reads them: safetensors with a ``latent_tensor`` [B,C,h,w]), each sample of a batch one row,
    centre-cropped to ``size``×``size`` latent pixels: float32 [N, channels, size, size], the files
    used, and the files skipped with the reason (unreadable, another channel count, smaller than
    ``size``, values that are not finite)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"latent folder {folder} does not exist")
    rows, used, skipped = [], [], []
    for path in files_under(folder, {".latent"}):
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            skipped.append(Skipped(path, f"cannot be read as a Save Latent file ({error})"))
            continue
        latent = tensors.get("latent_tensor")
        latent = None if latent is None else latent.float()
        reason = _latent_problem(latent, channels, size)
        if reason:
            skipped.append(Skipped(path, reason))
            continue
        scale = 1.0 if "latent_format_version_0" in tensors else LEGACY_LATENT_SCALE
        top, left = (latent.shape[2] - size) // 2, (latent.shape[3] - size) // 2
        rows.append(latent[:, :, top:top + size, left:left + size] * scale)
        used.append(path)
    stacked = torch.cat(rows) if rows else torch.zeros(0, channels, size, size)
    return stacked, used, skipped


def _latent_problem(latent, channels: int, size: int) -> str | None:
    if latent is None:
        return "no 'latent_tensor' in it (not a ComfyUI Save Latent file)"
    if latent.ndim != 4:
        return f"latent_tensor has shape {tuple(latent.shape)}; expected [batch, channels, height, width]"
    if latent.shape[1] != channels:
        return f"{latent.shape[1]} latent channels; the autoencoder has {channels} (a latent of another model)"
    if min(latent.shape[2:]) < size:
        return (f"too small: {latent.shape[3]}x{latent.shape[2]} latent pixels (the training size needs at least "
                f"{size} per side; a lower --resolution takes it)")
    if not torch.isfinite(latent).all():
        return "holds values that are not finite"
    return None
