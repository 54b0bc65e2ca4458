"""From a dataset folder to training inputs: filter the images, give each a bucket, and make sure
its latent and its caption's text features are in the feature cache (encoding only what is not).

Text follows the official training (``finetune.py`` of NewBie-image-Exp0.1): Gemma reads the system
prompt followed by the caption, Jina the caption alone (``prompting.encoder_texts``); with the
system prompt ``auto``, XML captions get the official XML system prompt and other captions the
official plain-text one, as that script chose per item. The empty caption ("" for both encoders,
what caption dropout and an empty negative give) is cached alongside.

With several processes (``training/distributed.py``) each prepares its share of the images, then
all exchange the results, so every process ends with the same list.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..prompting import PLAIN_OFFICIAL, SYSTEM_PROMPTS, XML_OFFICIAL, encoder_texts
from ..text.towers import encode_pair
from .buckets import bucket_sizes, fit, nearest_bucket
from .distributed import Distributed
from .feature_cache import FeatureCache
from .lora_data import Filters, Item, Skipped, UnreadableImage, decode_rgb, image_size, scan_dataset

log = logging.getLogger(__name__)

AUTO_SYSTEM_PROMPT = "auto"


@dataclass(frozen=True)
class InputSettings:
    resolution: int
    filters: Filters
    square: bool = False            # centre-crop every image to resolution² (no aspect buckets)
    system_prompt: str = AUTO_SYSTEM_PROMPT   # "auto", a preset name, or the literal text


@dataclass(frozen=True)
class TrainingItem:
    image: Path
    caption: str
    bucket: tuple[int, int]         # (width, height) in pixels
    latent_key: str
    text_key: str


@dataclass
class CacheCounts:
    latents_cached: int = 0
    latents_computed: int = 0
    texts_cached: int = 0
    texts_computed: int = 0

    def add(self, other: CacheCounts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def __str__(self) -> str:
        return (f"latents: {self.latents_cached} from the cache, {self.latents_computed} encoded; "
                f"text features: {self.texts_cached} from the cache, {self.texts_computed} encoded")


class Encoders:
    """The VAE and the text encoders, loaded on first use (a run with everything cached loads neither)."""

    def __init__(self, load_vae: Callable, load_text: Callable, device: torch.device):
        self._load_vae, self._load_text, self.device = load_vae, load_text, device
        self._vae = self._text = None

    @property
    def vae(self):
        if self._vae is None:
            self._vae = self._load_vae()
        return self._vae

    @property
    def text(self):
        """(gemma, jina) ``text.towers.Encoder`` pair on the device."""
        if self._text is None:
            encoders = self._load_text()
            self._text = (encoders.gemma, encoders.jina)
            for encoder in self._text:
                encoder.model.to(self.device)
        return self._text

    def free_text(self) -> None:
        self._text = None


@dataclass
class TrainingSet:
    items: list[TrainingItem]
    skipped: list[Skipped]
    counts: CacheCounts
    cache: FeatureCache
    empty_key: str                  # the empty caption's text features
    layout: str = ""
    extra_keys: dict[str, str] = field(default_factory=dict)   # other cached texts (sample prompts)

    def latents(self, indices: list[int]) -> Tensor:
        """Normalised latents (B, C, h, w) of items of one bucket."""
        return torch.stack([self.cache.latent(self.items[i].latent_key) for i in indices])

    def conditionings(self, indices: list[int], dropped: list[bool]) -> list:
        """One CONDITIONING per item; the empty caption's where ``dropped``."""
        return [self.cache.conditioning(self.empty_key if drop else self.items[i].text_key)
                for i, drop in zip(indices, dropped)]


def system_prompt_for(item: Item, choice: str) -> str:
    if choice == AUTO_SYSTEM_PROMPT:
        return XML_OFFICIAL if item.is_xml else PLAIN_OFFICIAL
    return SYSTEM_PROMPTS.get(choice, choice)


def encode_text(encoders: Encoders, gemma_text: str, jina_text: str) -> tuple[Tensor, Tensor]:
    """(Gemma features of the real tokens (L, cap_dim) in the encoder's dtype, Jina pooled (clip_dim,))."""
    gemma, jina = encoders.text
    encoding = encode_pair(gemma, jina, gemma_text, jina_text)
    for warning in encoding.warnings:
        log.warning("%s: %s", gemma_text[-60:], warning)
    dtype = next(gemma.model.parameters()).dtype
    return encoding.cap_feats[0].to(dtype), encoding.pooled[0]


def _cache_text(cache: FeatureCache, encoders: Encoders, texts: tuple[str, str], counts: CacheCounts) -> str:
    key = cache.text_key(*texts)
    if cache.has_text(key):
        counts.texts_cached += 1
    else:
        cache.save_text(key, *encode_text(encoders, *texts))
        counts.texts_computed += 1
    return key


def _prepare_item(item: Item, settings: InputSettings, buckets, cache: FeatureCache, encoders: Encoders,
                  counts: CacheCounts) -> TrainingItem | Skipped:
    try:
        data = item.image.read_bytes()
        width, height = image_size(data)
    except (OSError, UnreadableImage) as error:
        return Skipped(item.image, str(error))
    problem = settings.filters.problem(width, height)
    if problem:
        return Skipped(item.image, problem)
    bucket = (settings.resolution,) * 2 if settings.square else nearest_bucket(width, height, buckets)
    latent_key = cache.latent_key(hashlib.sha256(data).hexdigest(), bucket)
    if cache.has_latent(latent_key):
        counts.latents_cached += 1
    else:
        try:
            image = fit(decode_rgb(data), bucket)
        except UnreadableImage as error:
            return Skipped(item.image, str(error))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]   # (1, H, W, 3)
        cache.save_latent(latent_key, encoders.vae.encode(pixels)[0])
        counts.latents_computed += 1
    texts = encoder_texts(item.caption, system_prompt_for(item, settings.system_prompt))
    text_key = _cache_text(cache, encoders, texts, counts)
    return TrainingItem(item.image, item.caption, bucket, latent_key, text_key)


def prepare(folder: str | Path, settings: InputSettings, cache: FeatureCache, encoders: Encoders,
            job: Distributed, extra_texts: tuple[str, ...] = (), progress: bool = True) -> TrainingSet:
    """Scan ``folder``, filter, bucket and cache (see the module docstring). ``extra_texts``: prompts
    (with ``settings.system_prompt`` rules) whose features the first process also caches."""
    scan = scan_dataset(folder)
    buckets = [] if settings.square else bucket_sizes(settings.resolution, settings.filters.min_aspect,
                                                      settings.filters.max_aspect)
    from tqdm import tqdm

    counts = CacheCounts()
    mine = list(range(job.rank, len(scan.items), job.world_size))
    results = {index: _prepare_item(scan.items[index], settings, buckets, cache, encoders, counts)
               for index in tqdm(mine, desc="latents and text features", unit="image",
                                 disable=not (progress and job.is_main))}
    extra_keys = {}
    if job.is_main:
        extra_keys[""] = _cache_text(cache, encoders, ("", ""), counts)
        for text in extra_texts:
            texts = encoder_texts(text, system_prompt_for(Item(Path(), text), settings.system_prompt))
            extra_keys[text] = _cache_text(cache, encoders, texts, counts)
    encoders.free_text()

    shares = job.gather((results, counts, extra_keys))
    results, counts = {}, CacheCounts()
    for share_results, share_counts, share_extra in shares:
        results.update(share_results)
        counts.add(share_counts)
        extra_keys.update(share_extra)
    ordered = [results[index] for index in range(len(scan.items))]
    items = [r for r in ordered if isinstance(r, TrainingItem)]
    skipped = scan.skipped + [r for r in ordered if isinstance(r, Skipped)]
    return TrainingSet(items, skipped, counts, cache, extra_keys[""], scan.layout, extra_keys)


def merged(sets: list[TrainingSet]) -> TrainingSet:
    """Several training sets of one feature cache as one (the prior images of several sources)."""
    counts = CacheCounts()
    for part in sets:
        counts.add(part.counts)
    return TrainingSet([item for part in sets for item in part.items], [s for part in sets for s in part.skipped],
                       counts, sets[0].cache, sets[0].empty_key, " + ".join(part.layout for part in sets))
