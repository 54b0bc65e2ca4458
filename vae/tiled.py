"""Tiled VAE decoding: overlapping latent tiles, each decoded alone, blended with linear ramps.

Memory is bounded by one tile's activations plus the output image, whatever the image size. The
result is close to, not equal to, an untiled decode: the FLUX decoder's GroupNorms and its
mid-block attention see only their tile, so statistics differ slightly from tile to tile; the
overlap ramps hide the seams. A decoder without such global layers (TAEF1) differs only where the
influence of a tile's zero padding reaches past the margin that blending drops (a quarter of the
overlap); a decoder that reaches less far is tiled exactly.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

# Untiled decoding is chosen while its estimated peak stays under this share of the free memory;
# the rest is headroom for the estimate's error and for whatever else runs in the process.
FREE_MEMORY_SHARE = 0.6


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest tiles of ``tile`` covering ``[0, size)`` with neighbours
    overlapping by at least ``overlap``, spread evenly (first at 0, last ending at ``size``)."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _ramp(length: int, fade_in: int, fade_out: int) -> torch.Tensor:
    """1-D blend weights of one tile: 0 over the outer quarter of each faded side (where the
    tile's own zero padding distorts it), then rising linearly to 1 at the end of the fade."""
    position = torch.arange(length) + 0.5
    weights = torch.ones(length)
    for fade, distance in ((fade_in, position), (fade_out, length - position)):
        if fade:
            margin = fade // 4
            weights = torch.minimum(weights, ((distance - margin) / (fade - 2 * margin)).clamp(0, 1))
    return weights


def count_tiles(latent_hw: tuple[int, int], tile: int, overlap: int) -> int:
    """How many tiles :func:`tiled_decode` decodes for one latent of ``latent_hw``."""
    return len(tile_starts(latent_hw[0], tile, overlap)) * len(tile_starts(latent_hw[1], tile, overlap))


def tiled_decode(decode: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor, scale: int,
                 tile: int = 64, overlap: int = 16,
                 on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Decode ``latent`` [B,C,h,w] tile by tile; returns ``decode``'s image [B,3,h*scale,w*scale].

    ``tile`` and ``overlap`` are in latent pixels; ``decode`` maps a latent tile [B,C,th,tw] to its
    image [B,3,th*scale,tw*scale]. Tiles are blended by a weighted mean whose weights ramp
    linearly across each overlap and are 0 on its outer quarter, so the border pixels a tile's
    zero padding distorts are dropped where a neighbour covers them (accumulated in float32 on
    the decoder's device). ``on_tile`` runs after each tile (progress, cancellation).
    """
    batch, _, height, width = latent.shape
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    image = weight_sum = None
    for top in rows:
        for left in cols:
            piece = decode(latent[:, :, top:top + tile, left:left + tile]).float()
            if image is None:
                image = torch.zeros(batch, piece.shape[1], height * scale, width * scale,
                                    device=piece.device)
                weight_sum = torch.zeros(1, 1, height * scale, width * scale, device=piece.device)
            th, tw = piece.shape[-2:]
            y, x = top * scale, left * scale
            weight = _tile_weight(rows, cols, top, left, tile, overlap, scale, (th, tw)).to(piece.device)
            image[:, :, y:y + th, x:x + tw] += piece * weight
            weight_sum[:, :, y:y + th, x:x + tw] += weight
            if on_tile is not None:
                on_tile()
    return image / weight_sum


def _tile_weight(rows, cols, top, left, tile, overlap, scale, size) -> torch.Tensor:
    """[1,1,th,tw] weights of one tile: fades only on sides that have a neighbour."""
    def fades(starts, start):
        index = starts.index(start)
        before = overlap * scale if index > 0 else 0
        after = overlap * scale if index + 1 < len(starts) else 0
        return before, after

    fade_top, fade_bottom = fades(rows, top)
    fade_left, fade_right = fades(cols, left)
    vertical = _ramp(size[0], fade_top, fade_bottom)
    horizontal = _ramp(size[1], fade_left, fade_right)
    return (vertical[:, None] * horizontal[None, :])[None, None]


def should_tile(image_hw: tuple[int, int], bytes_per_pixel: float, free_bytes: int) -> bool:
    """Whether an untiled decode of one ``image_hw`` image would likely not fit: its estimated
    peak (``bytes_per_pixel`` × pixels) is over :data:`FREE_MEMORY_SHARE` of ``free_bytes``."""
    estimate = image_hw[0] * image_hw[1] * bytes_per_pixel
    return estimate > FREE_MEMORY_SHARE * free_bytes


def fitting_tile(bytes_per_pixel: float, free_bytes: int, scale: int, overlap: int) -> int:
    """The largest square latent tile (a multiple of 8, at least ``2 * overlap + 8``) whose
    estimated decode peak stays under :data:`FREE_MEMORY_SHARE` of ``free_bytes``: fewer, larger
    tiles mean less recomputed overlap and fewer seams."""
    side = int(math.sqrt(FREE_MEMORY_SHARE * free_bytes / bytes_per_pixel)) // scale // 8 * 8
    return max(side, 2 * overlap + 8)


def free_memory_bytes(device: torch.device) -> int:
    """Memory a decode may still use on ``device``: for CUDA the driver's free memory plus what
    torch's cache holds unused; for the CPU the kernel's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    return _available_ram_bytes()


def _available_ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # optional; present on many machines (and inside ComfyUI)

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    # Last resort (macOS without psutil): free pages only, an underestimate, so it errs to tiling.
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        logger.warning("cannot tell the free memory; assuming 4 GiB")
        return 4 << 30
