"""The FLUX latent format, in one place.

The DiT works on the normalised latent; LATENT values between nodes (and core ``VAEDecode``) use
the VAE's raw space: ``raw = normalised / scale + shift`` (research/newbie-model.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LatentFormat:
    scale: float
    shift: float

    def to_raw(self, normalised: torch.Tensor) -> torch.Tensor:
        return normalised / self.scale + self.shift

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.shift) * self.scale


FLUX = LatentFormat(scale=0.3611, shift=0.1159)
