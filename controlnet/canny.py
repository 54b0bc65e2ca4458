"""Canny edge detection in plain torch, with the conventions of kornia's ``filters.canny`` (what
core ComfyUI's ``Canny`` node runs), so a control image made here matches one made in ComfyUI:

1. grey = 0.299 R + 0.587 G + 0.114 B;
2. a 5x5 Gaussian blur, sigma 1, borders mirrored (reflect);
3. unnormalised Sobel gradients (borders replicated); magnitude sqrt(gx² + gy² + 1e-6);
4. non-maximum suppression along the gradient direction rounded to 45°: a pixel must beat both
   neighbours in that direction, a tie allowed only towards the right and downward neighbour; a
   pixel with zero gradient is never kept;
5. weak pixels (magnitude > low) joined to strong ones (> high) through 8-neighbours, repeated
   until nothing changes.

Thresholds are in the magnitude's units (a unit step of an image in [0, 1] reaches about 2.6 after
the blur), as core's node passes its widgets to kornia.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6
# Neighbour offsets (dy, dx) of the 8 gradient directions k·45°, y pointing down.
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _gaussian(size: int = 5, sigma: float = 1.0) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-x * x / (2 * sigma * sigma))
    return kernel / kernel.sum()


def _gradients(grey: Tensor) -> tuple[Tensor, Tensor]:
    g = _gaussian().to(grey)
    blurred = F.conv2d(F.pad(grey, (0, 0, 2, 2), mode="reflect"), g.view(1, 1, 5, 1))
    blurred = F.conv2d(F.pad(blurred, (2, 2, 0, 0), mode="reflect"), g.view(1, 1, 1, 5))
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).to(grey)
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel_x.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel_x.t().contiguous().view(1, 1, 3, 3))
    return gx, gy


def canny(image: Tensor, low_threshold: float, high_threshold: float) -> Tensor:
    """image (B, 3 or 1, H, W) in [0, 1] -> edges (B, 1, H, W) of 0 and 1 (float32)."""
    if not 0 < low_threshold <= high_threshold:
        raise ValueError(f"need 0 < low_threshold <= high_threshold; got {low_threshold}, {high_threshold}")
    image = image.float()
    if image.shape[1] == 3:
        image = 0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]
    gx, gy = _gradients(image)
    height, width = gx.shape[-2:]
    padded = torch.sqrt(F.pad(gx, (1, 1, 1, 1)) ** 2 + F.pad(gy, (1, 1, 1, 1)) ** 2 + EPS)
    magnitude = padded[..., 1:-1, 1:-1]
    direction = (torch.nan_to_num(torch.atan2(gy, gx)) * (4 / math.pi)).round().long() % 8

    def neighbour(k: Tensor) -> Tensor:
        shifted = torch.stack([padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy, dx in _DIRECTIONS])
        return shifted.gather(0, k.unsqueeze(0)).squeeze(0)

    def beats(k: Tensor) -> Tensor:
        other = neighbour(k)
        tie_ok = (k == 0) | (k == 2)
        return (magnitude > other) | (tie_ok & (magnitude == other))

    keep = beats(direction) & beats((direction + 4) % 8) & (magnitude > math.sqrt(EPS))
    magnitude = magnitude * keep
    weak = magnitude > low_threshold
    edges = magnitude > high_threshold
    while True:
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        grown |= edges
        if torch.equal(grown, edges):
            return edges.float()
        edges = grown
