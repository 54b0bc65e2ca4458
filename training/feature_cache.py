"""Training inputs computed once and kept on disk: VAE latents and text features.

Each entry is one small safetensors file named by a SHA-256 key over everything that determines
its content, so a changed image, caption, crop, encoder file or setting is a new key and a second
run with the same inputs reads instead of encoding:

- a latent: the image file's bytes (its digest), the bucket size, the VAE's fingerprint
  (``files/fingerprint.py``); stored raw (the VAE's own space, float32), normalised with the FLUX
  constants on reading, as sampling's ``FLUX.to_raw`` inverts;
- text features: the exact Gemma and Jina texts (system prompt included) and both encoders'
  fingerprints; stored as Gemma's features of the real tokens (L, cap_dim) in the dtype they were
  computed in, and Jina's pooled vector.
Files are written under a temporary name and renamed, so concurrent processes never read half a
file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import Tensor

from ..files.atomic import atomic_path
from ..vae.latent_format import FLUX

# Bumped when the way an entry is computed changes, so old entries are not reused.
CACHE_VERSION = "1"


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join((CACHE_VERSION, *parts)).encode()).hexdigest()


class FeatureCache:
    def __init__(self, folder: str | Path, vae_id: str, text_id: str):
        self.folder = Path(folder)
        self.vae_id, self.text_id = vae_id, text_id

    def latent_key(self, image_digest: str, bucket: tuple[int, int]) -> str:
        return _key("latent", image_digest, f"{bucket[0]}x{bucket[1]}", self.vae_id)

    def text_key(self, gemma_text: str, jina_text: str) -> str:
        return _key("text", gemma_text, jina_text, self.text_id)

    def _path(self, kind: str, key: str) -> Path:
        return self.folder / kind / key[:2] / f"{key}.safetensors"

    def has_latent(self, key: str) -> bool:
        return self._path("latents", key).is_file()

    def has_text(self, key: str) -> bool:
        return self._path("text", key).is_file()

    def save_latent(self, key: str, raw: Tensor) -> None:
        """``raw``: (C, h, w) in the VAE's raw space."""
        self._write(self._path("latents", key), {"latent": raw.float()})

    def save_text(self, key: str, cap_feats: Tensor, pooled: Tensor) -> None:
        """``cap_feats``: (L, cap_dim) real tokens only; ``pooled``: (clip_dim,)."""
        self._write(self._path("text", key), {"cap_feats": cap_feats, "pooled": pooled})

    def latent(self, key: str) -> Tensor:
        """The normalised latent (C, h, w) float32, as the Next-DiT trains on it."""
        from safetensors.torch import load_file

        return FLUX.from_raw(load_file(str(self._path("latents", key)))["latent"])

    def conditioning(self, key: str) -> list:
        """The cached text as a CONDITIONING of one prompt (``text/conditioning.py``)."""
        from safetensors.torch import load_file

        tensors = load_file(str(self._path("text", key)))
        return [[tensors["cap_feats"].float()[None], {"pooled_output": tensors["pooled"].float()[None]}]]

    @staticmethod
    def _write(path: Path, tensors: dict[str, Tensor]) -> None:
        from safetensors.torch import save_file

        with atomic_path(path) as partial:   # one writer per process: the name carries its id
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial))
