"""The FLUX latent format, in one place.

The DiT works on the normalised latent; LATENT values between nodes (and core ``VAEDecode``) use
the VAE's raw space: ``raw = normalised / scale + shift``, with FLUX.1's scale 0.3611 and shift
0.1159 (black-forest-labs/flux ``src/flux/util.py`` ``AutoEncoderParams``; the official NewBie
``finetune.py`` encodes ``(z - 0.1159) * 0.3611``, ComfyUI's ``latent_formats.Flux`` does the same).
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


# A VAE file may carry its own constants in its safetensors ``__metadata__`` (the embedded model's
# VAE does): both keys hold decimal strings. Files without them use FLUX's.
METADATA_SCALE_KEY = "latent_scale"
METADATA_SHIFT_KEY = "latent_shift"


def latent_format_from_metadata(metadata: dict[str, str], default: LatentFormat = FLUX) -> LatentFormat:
    """The latent format a weight file declares in its metadata, else ``default``.

    Raises ValueError when only one of the two keys is present, or a value is not a finite number
    (or the scale is zero): a half-declared format would silently decode garbage.
    """
    present = [key for key in (METADATA_SCALE_KEY, METADATA_SHIFT_KEY) if key in metadata]
    if not present:
        return default
    if len(present) == 1:
        raise ValueError(f"metadata declares {present[0]!r} without its partner; a file that sets "
                         f"its latent format needs both {METADATA_SCALE_KEY!r} and "
                         f"{METADATA_SHIFT_KEY!r}")
    values = {}
    for key in (METADATA_SCALE_KEY, METADATA_SHIFT_KEY):
        try:
            values[key] = float(metadata[key])
        except ValueError:
            raise ValueError(f"metadata {key}={metadata[key]!r} is not a number") from None
        if values[key] != values[key] or values[key] in (float("inf"), float("-inf")):
            raise ValueError(f"metadata {key}={metadata[key]!r} is not a finite number")
    if values[METADATA_SCALE_KEY] == 0.0:
        raise ValueError(f"metadata {METADATA_SCALE_KEY}=0 would divide by zero")
    return LatentFormat(scale=values[METADATA_SCALE_KEY], shift=values[METADATA_SHIFT_KEY])
