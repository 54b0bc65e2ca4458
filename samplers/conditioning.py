"""CONDITIONING (ComfyUI's native list) to the tensors the Next-DiT forward takes.

A CONDITIONING is ``[[cap_feats (n, L, cap_dim), {"pooled_output": (n, clip_dim), "attention_mask":
(n, L), ...}], ...]`` with n = 1 (shared by the whole latent batch) or n = batch size. Core
ComfyUI's NewBie encoder may give only ``pooled_output``: without ``attention_mask`` every token is
real. Several entries are averaged (ComfyUI's behaviour for entries without areas), so each entry
becomes one ``PromptBatch`` of the latent batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
