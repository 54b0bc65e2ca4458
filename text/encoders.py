"""NEXTDIT_TEXT: the loaded Gemma + Jina pair, with an encode cache and memory controls.

Memory policy: the weights live on the CPU (Gemma 3 4B alone is about 8 GB in bf16, the NewBie
DiT 7 GB, so both cannot stay on a 12 GB card). When the compute device is a GPU,
both encoders move there for an encode and back to the CPU right after, so between prompts they
take no GPU memory and the DiT has the card. ``free()`` drops them entirely (the next encode that
misses the cache loads them again from their files); ``offload()`` moves them to the CPU.

Repeated encodes of the same texts are served from a bounded LRU cache held by this object, so
the key is (these encoders, gemma text, jina text).
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from typing import Callable

import torch

from .towers import Encoder, TextEncoding, encode_pair

log = logging.getLogger(__name__)

CACHE_SIZE = 32

Loader = Callable[[], "tuple[Encoder, Encoder]"]
MakeRoom = Callable[[int, torch.device], None]   # (bytes needed, device): the host frees memory


class TextEncoders:
    """Both text encoders; ``encode(gemma_text, jina_text) -> TextEncoding``."""

    def __init__(self, load: Loader, compute_device: torch.device | str = "cpu",
                 name: str = "", cache_size: int = CACHE_SIZE,
                 encoders: tuple[Encoder, Encoder] | None = None, make_room: MakeRoom | None = None,
                 system_prompt: str | None = None):
        self._load = load
        # The system prompt the Gemma file records it was trained with (None: it records none);
        # NextDiT Text Encode's ``auto`` follows it.
        self.system_prompt = system_prompt
        self._make_room = make_room
        self.compute_device = torch.device(compute_device)
        self.storage_device = torch.device("cpu")
        self.name = name
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], TextEncoding] = OrderedDict()
        self._pair = encoders

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "freed"
        return f"TextEncoders({self.name!r}, {state}, compute on {self.compute_device})"

    @property
    def loaded(self) -> bool:
        return self._pair is not None

    @property
    def gemma(self) -> Encoder:
        return self._ensure_loaded()[0]

    @property
    def jina(self) -> Encoder:
        return self._ensure_loaded()[1]

    def _ensure_loaded(self) -> tuple[Encoder, Encoder]:
        if self._pair is None:
            log.info("loading text encoders %s", self.name)
            self._pair = self._load()
        return self._pair

    def encode(self, gemma_text: str, jina_text: str) -> TextEncoding:
        """Gemma features of ``gemma_text`` and Jina pooled ``jina_text`` (cached)."""
        key = (gemma_text, jina_text)
        if key in self._cache:
            self._cache.move_to_end(key)
            return _copy(self._cache[key])
        gemma, jina = self._ensure_loaded()
        try:
            if self.compute_device != self.storage_device and self._make_room is not None:
                self._make_room(self.weight_bytes(), self.compute_device)
            self._move(self.compute_device)
            result = encode_pair(gemma, jina, gemma_text, jina_text)
        finally:
            if self.compute_device != self.storage_device:
                self.offload()
        self._cache[key] = result
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return _copy(result)

    def offload(self) -> None:
        """Move both encoders to the CPU (no-op when freed)."""
        self._move(self.storage_device)
        if self.compute_device.type == "cuda":
            torch.cuda.empty_cache()

    def free(self) -> None:
        """Drop both encoders (their memory is released once no one else holds them). The cache
        stays: cached prompts still encode without reloading; others reload from the files."""
        self._pair = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def weight_bytes(self) -> int:
        """Memory the loaded encoders' weights take (0 when freed)."""
        if self._pair is None:
            return 0
        return sum(p.numel() * p.element_size() for e in self._pair for p in e.model.parameters())

    def _move(self, device: torch.device) -> None:
        if self._pair is None:
            return
        for encoder in self._pair:
            encoder.model.to(device)


def _copy(encoding: TextEncoding) -> TextEncoding:
    # Callers get their own tensors: a consumer editing one in place cannot poison the cache.
    return TextEncoding(encoding.cap_feats.clone(), encoding.attention_mask.clone(),
                        encoding.pooled.clone(), list(encoding.warnings))
