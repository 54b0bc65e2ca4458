"""CONDITIONING, ComfyUI's native prompt type, in one place: built by the text encode node, read
into the tensors the Next-DiT forward takes, and stored as a file of training prompts.

A CONDITIONING is ``[[cap_feats (n, L, cap_dim), {"pooled_output": (n, clip_dim), "attention_mask":
(n, L), ...}], ...]`` with n = 1 (shared by the whole latent batch) or n = batch size. The pack's
encoder adds the two texts it encoded (``gemma_text``, ``jina_text``) and its warnings. Core
ComfyUI's NewBie encoder may give only ``pooled_output``: without ``attention_mask`` every token is
real. Several entries are averaged (ComfyUI's behaviour for entries without areas), so each entry
becomes one ``PromptBatch`` of the latent batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .towers import TextEncoding


# ---- building ----------------------------------------------------------------------------------

def conditioning(encoding: TextEncoding, gemma_text: str, jina_text: str,
                 prompt_warnings: list[str] | None = None) -> list:
    """ComfyUI CONDITIONING for one encoded prompt: ``[[cap_feats [1,L,D], {...}]]`` with
    ``pooled_output`` [1,Dj], ``attention_mask`` [1,L] (1 = real token), both texts and every
    warning (prompt parsing first, then truncation)."""
    return [[encoding.cap_feats, {
        "pooled_output": encoding.pooled,
        "attention_mask": encoding.attention_mask,
        "gemma_text": gemma_text,
        "jina_text": jina_text,
        "prompt_warnings": list(prompt_warnings or []) + list(encoding.warnings),
    }]]


# ---- reading -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptBatch:
    """Caption features for a batch, real tokens first: feats (N, L, cap_dim), mask (N, L) bool,
    pooled (N, clip_dim) or None."""
    feats: Tensor
    mask: Tensor
    pooled: Tensor | None

    @property
    def size(self) -> int:
        return self.feats.shape[0]

    def to(self, device: torch.device) -> PromptBatch:
        pooled = None if self.pooled is None else self.pooled.to(device)
        return PromptBatch(self.feats.to(device), self.mask.to(device), pooled)


def _real_tokens_first(feats: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move every sample's real tokens to the front (stable order) and drop all-padding columns."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)              # real (0) first
    feats = torch.gather(feats, 1, order.unsqueeze(-1).expand_as(feats))
    mask = torch.gather(mask, 1, order)
    longest = max(int(mask.sum(1).max()), 1)
    return feats[:, :longest], mask[:, :longest]


def _entry_to_batch(entry, batch_size: int, index: int, what: str) -> PromptBatch:
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], Tensor)):
        raise ValueError(f"{what} entry {index} is not a CONDITIONING entry [tensor, dict]; "
                         f"connect the output of a text encode node")
    feats, extras = entry[0].float(), entry[1] or {}
    if feats.ndim != 3:
        raise ValueError(f"{what} entry {index}: caption features must be (n, L, dim); "
                         f"got {tuple(feats.shape)}")
    n, length = feats.shape[:2]
    mask = extras.get("attention_mask")
    mask = torch.ones(n, length, dtype=torch.bool) if mask is None else mask.to(feats.device).bool()
    if mask.ndim == 1:
        mask = mask.unsqueeze(0)
    if mask.shape != (n, length):
        raise ValueError(f"{what} entry {index}: attention_mask {tuple(mask.shape)} does not match "
                         f"the caption features {(n, length)}")
    pooled = extras.get("pooled_output")
    pooled = None if pooled is None else pooled.float().reshape(pooled.shape[0], -1)
    if n not in (1, batch_size) or (pooled is not None and pooled.shape[0] not in (1, batch_size)):
        raise ValueError(f"{what} entry {index} holds {n} prompts but the batch has {batch_size} "
                         f"latents; use one prompt or one per latent")
    feats, mask = _real_tokens_first(feats, mask)
    if n == 1:  # one prompt for the whole batch: views, no copies
        feats, mask = feats.expand(batch_size, -1, -1), mask.expand(batch_size, -1)
    if pooled is not None and pooled.shape[0] == 1:
        pooled = pooled.expand(batch_size, -1)
    return PromptBatch(feats, mask, pooled)


def prompt_batches(conditioning, batch_size: int, cap_dim: int, clip_dim: int | None,
                   what: str = "positive") -> list[PromptBatch]:
    """One PromptBatch of ``batch_size`` per CONDITIONING entry, checked against the model's widths.

    ``clip_dim`` None (Lumina-2 shaped weights) drops the pooled vectors, which those weights ignore.
    """
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{what} conditioning is empty or not a CONDITIONING list; "
                         f"connect the output of a text encode node")
    batches = []
    for index, entry in enumerate(conditioning):
        batch = _entry_to_batch(entry, batch_size, index, what)
        if batch.feats.shape[-1] != cap_dim:
            raise ValueError(f"{what} caption features are {batch.feats.shape[-1]} wide but the model "
                             f"expects {cap_dim}: encode the prompt with this model's text encoder "
                             f"(Gemma 3 4B for NewBie)")
        pooled = batch.pooled
        if clip_dim is None:
            pooled = None
        elif pooled is not None and pooled.shape[-1] != clip_dim:
            raise ValueError(f"{what} pooled_output is {pooled.shape[-1]} wide but the model expects "
                             f"{clip_dim}: encode the prompt with this model's CLIP (Jina CLIP v2 for NewBie)")
        batches.append(PromptBatch(batch.feats, batch.mask, pooled))
    return batches


def pack(batches: list[PromptBatch]) -> PromptBatch:
    """Concatenate along the batch, padding captions to the longest (mask False on padding)."""
    longest = max(b.feats.shape[1] for b in batches)
    feats = torch.cat([torch.nn.functional.pad(b.feats, (0, 0, 0, longest - b.feats.shape[1]))
                       for b in batches])
    mask = torch.cat([torch.nn.functional.pad(b.mask, (0, longest - b.mask.shape[1]), value=False)
                      for b in batches])
    with_pooled = [b.pooled is not None for b in batches]
    if all(with_pooled):
        pooled = torch.cat([b.pooled for b in batches])
    elif not any(with_pooled):
        pooled = None
    else:
        raise ValueError("some conditionings carry a pooled CLIP vector (pooled_output) and others do "
                         "not; encode positive and negative with the same text encoder node")
    return PromptBatch(feats, mask, pooled)


def longest_caption(conditioning) -> int:
    """The most caption tokens any entry of ``conditioning`` holds (0 for None or empty)."""
    return max((int(entry[0].shape[1]) for entry in conditioning or () if hasattr(entry[0], "shape")), default=0)


def is_conditioning(value) -> bool:
    """A CONDITIONING is a list of [tensor, dict] entries (a list of CONDITIONINGs is not)."""
    return bool(value) and isinstance(value[0], (list, tuple)) and len(value[0]) == 2 \
        and isinstance(value[0][0], Tensor)


# ---- a file of conditionings (training prompts encoded once) -----------------------------------

def save_conditionings(path: str | Path, positives: list, negative) -> Path:
    """Write training prompts as one safetensors file: ``positive.{i}.cap_feats`` (L, cap_dim) with
    only real tokens, ``positive.{i}.pooled`` (clip_dim) if any; the negative the same way under
    ``negative.`` (one shared) or ``negative.{i}.`` (one per prompt)."""
    from safetensors.torch import save_file  # noqa: PLC0415

    tensors: dict[str, Tensor] = {}

    def put(prefix: str, conditioning) -> None:
        feats, extras = conditioning[0][0], conditioning[0][1] or {}
        mask = extras.get("attention_mask")
        feats = feats[0] if mask is None else feats[0][mask[0].bool().cpu()]
        tensors[f"{prefix}.cap_feats"] = feats.float().cpu().clone()  # own storage: safetensors refuses shared tensors
        if extras.get("pooled_output") is not None:
            tensors[f"{prefix}.pooled"] = extras["pooled_output"].reshape(-1).float().cpu().clone()

    for index, conditioning in enumerate(positives):
        put(f"positive.{index}", conditioning)
    if is_conditioning(negative):
        put("negative", negative)
    else:
        for index, conditioning in enumerate(negative):
            put(f"negative.{index}", conditioning)
    save_file(tensors, str(path), metadata={"nextdit_conditionings": "1"})
    return Path(path)


def load_conditionings(path: str | Path) -> tuple[list, object]:
    """(positives, negative) as CONDITIONINGs from a file written by ``save_conditionings``."""
    from safetensors.torch import load_file  # noqa: PLC0415

    tensors = load_file(str(path))

    def get(prefix: str):
        if f"{prefix}.cap_feats" not in tensors:
            return None
        extras = {}
        if f"{prefix}.pooled" in tensors:
            extras["pooled_output"] = tensors[f"{prefix}.pooled"][None]
        return [[tensors[f"{prefix}.cap_feats"][None], extras]]

    positives = []
    while (conditioning := get(f"positive.{len(positives)}")) is not None:
        positives.append(conditioning)
    negative = get("negative")
    if negative is None:
        negative = [get(f"negative.{i}") for i in range(len(positives))]
        if any(n is None for n in negative):
            negative = None
    if not positives or negative is None:
        raise ValueError(f"{path} is not a conditionings file (positive.N.cap_feats and negative[.N].cap_feats "
                         f"keys); write one with nextdit_nodes.text.conditioning.save_conditionings")
    return positives, negative
