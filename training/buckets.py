"""Aspect-ratio buckets and the order of training batches.

Buckets are image sizes with both sides multiples of 16 (8× VAE downsampling × 2×2 patches) and
about the pixel count of ``resolution``²: for each width, the largest height whose area does not
exceed it. Each image goes to the bucket nearest its aspect ratio (in log space), is scaled to
cover it and centre-cropped (the official ``imgproc`` picks crop sizes the same way). With
``square`` every image is centre-cropped to resolution × resolution.

Batches: one bucket per global batch (a latent batch has one size). Each epoch shuffles every
bucket's images with a generator seeded by (seed, epoch), cuts them into global batches (a short
last batch is topped up with the bucket's first images, so small buckets still train) and
shuffles the batches' order. Batch n is a pure function of (n, seed), so a resumed run continues
exactly where it stopped and every process of a job sees the same batches.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

SIDE_MULTIPLE = 16


def bucket_sizes(resolution: int, min_aspect: float = 0.5, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets of about ``resolution``² pixels with width / height in [min, max]."""
    if resolution % SIDE_MULTIPLE or resolution <= 0:
        raise ValueError(f"resolution must be a positive multiple of {SIDE_MULTIPLE}; got {resolution}")
    area = resolution * resolution
    sizes = []
    for width in range(SIDE_MULTIPLE, int(resolution * math.sqrt(max_aspect)) + SIDE_MULTIPLE, SIDE_MULTIPLE):
        height = area // width // SIDE_MULTIPLE * SIDE_MULTIPLE
        if height >= SIDE_MULTIPLE and min_aspect <= width / height <= max_aspect:
            sizes.append((width, height))
    return sizes


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(width / height)
    return min(buckets, key=lambda size: (abs(math.log(size[0] / size[1]) - aspect), -size[0] * size[1]))


def fit(image, size: tuple[int, int]):
    """A PIL image scaled (Lanczos) to cover ``size`` = (width, height) and centre-cropped to it."""
    from PIL import Image

    width, height = size
    scale = max(width / image.width, height / image.height)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if scaled != image.size:
        image = image.resize(scaled, Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


class BatchOrder:
    """Global batches of item indices (see the module docstring): ``batch(n)`` for n = 0, 1, ..."""

    def __init__(self, buckets: list[tuple[int, int]], global_batch: int, seed: int):
        """buckets: each item's bucket (index = item index)."""
        if not buckets:
            raise ValueError("no training images")
        self.global_batch, self.seed = global_batch, seed
        self.members: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(buckets):
            self.members.setdefault(bucket, []).append(index)
        self.per_epoch = sum(math.ceil(len(m) / global_batch) for m in self.members.values())

    def batch(self, n: int) -> list[int]:
        epoch, position = divmod(n, self.per_epoch)
        return self._epoch(epoch)[position]

    @lru_cache(maxsize=2)
    def _epoch(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches = []
        for bucket in sorted(self.members):
            members = self.members[bucket]
            order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            for start in range(0, len(order), self.global_batch):
                chunk = order[start:start + self.global_batch]
                while len(chunk) < self.global_batch:   # top up from the bucket's start
                    chunk += order[:self.global_batch - len(chunk)]
                batches.append(chunk)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
