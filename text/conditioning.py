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

from ..files.atomic import atomic_path
from .towers import TextEncoding

# ---- building ----------------------------------------------------------------------------------

def conditioning(encoding: TextEncoding, gemma_text: str, jina_text: str,
                 prompt_warnings: list[str] | None = None, token_weights: list[float] | None = None) -> list:
    """ComfyUI CONDITIONING for one encoded prompt: ``[[cap_feats [1,L,D], {...}]]`` with
    ``pooled_output`` [1,Dj], ``attention_mask`` [1,L] (1 = real token), both texts and every
    warning (prompt parsing first, then truncation); with prompt weights also ``token_weights``
    [1,L] (one per Gemma token; absent when every token weighs 1)."""
    extras = {
        "pooled_output": encoding.pooled,
        "attention_mask": encoding.attention_mask,
        "gemma_text": gemma_text,
        "jina_text": jina_text,
        "prompt_warnings": list(prompt_warnings or []) + list(encoding.warnings),
    }
    if token_weights is not None and any(w != 1.0 for w in token_weights):
        length = encoding.cap_feats.shape[1]
        weights = torch.ones(1, length)
        weights[0, :min(length, len(token_weights))] = torch.tensor(token_weights[:length], dtype=torch.float32)
        extras["token_weights"] = weights
    return [[encoding.cap_feats, extras]]


# ---- reading -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptBatch:
    """Caption features for a batch, real tokens first: feats (N, L, cap_dim), mask (N, L) bool,
    pooled (N, clip_dim) or None; weights (N, L) float, the prompt weights of the caption tokens
    (``token_weights``, see ``steering/weights.py``), or None when every token weighs 1."""
    feats: Tensor
    mask: Tensor
    pooled: Tensor | None
    weights: Tensor | None = None

    @property
    def size(self) -> int:
        return self.feats.shape[0]

    def to(self, device: torch.device) -> PromptBatch:
        pooled = None if self.pooled is None else self.pooled.to(device)
        weights = None if self.weights is None else self.weights.to(device)
        return PromptBatch(self.feats.to(device), self.mask.to(device), pooled, weights)


def _real_tokens_first(feats: Tensor, mask: Tensor, weights: Tensor | None = None):
    """Move every sample's real tokens to the front (stable order) and drop all-padding columns
    (the token weights, when given, move with them)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)              # real (0) first
    feats = torch.gather(feats, 1, order.unsqueeze(-1).expand_as(feats))
    mask = torch.gather(mask, 1, order)
    longest = max(int(mask.sum(1).max()), 1)
    if weights is None:
        return feats[:, :longest], mask[:, :longest]
    return feats[:, :longest], mask[:, :longest], torch.gather(weights, 1, order)[:, :longest]


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
    weights = extras.get("token_weights")
    if weights is not None:
        weights = weights.float().to(feats.device).reshape(weights.shape[0], -1)
        if weights.shape != (n, length):
            raise ValueError(f"{what} entry {index}: token_weights {tuple(weights.shape)} do not match the "
                             f"caption features {(n, length)}")
        if not (torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(f"{what} entry {index}: token_weights must be finite and not negative")
        feats, mask, weights = _real_tokens_first(feats, mask, weights)
    else:
        feats, mask = _real_tokens_first(feats, mask)
    if n == 1:  # one prompt for the whole batch: views, no copies
        feats, mask = feats.expand(batch_size, -1, -1), mask.expand(batch_size, -1)
        weights = None if weights is None else weights.expand(batch_size, -1)
    if pooled is not None and pooled.shape[0] == 1:
        pooled = pooled.expand(batch_size, -1)
    return PromptBatch(feats, mask, pooled, weights)


# What the pack's sampler does with each key an entry may carry: the keys it reads, and for the
# keys other nodes add that it cannot apply, which node adds them and what to use instead.
READ_KEYS = frozenset({"pooled_output", "attention_mask", "gemma_text", "jina_text", "prompt_warnings",
                       "start_percent", "end_percent", "strength", "control", "control_apply_to_uncond",
                       "token_weights"})
_CORE_PATH = ("sample with core's KSampler on NextDiT Loader's core_model output, which applies it, or "
              "remove that node")
REFUSED_KEYS = {
    "area": "an area (ConditioningSetArea / ConditioningSetAreaPercentage): NextDiT Sampler applies every "
            "prompt to the whole image",
    "set_area_to_bounds": "an area from a mask (ConditioningSetMask): NextDiT Sampler applies every prompt to "
                          "the whole image",
    "mask": "a mask (ConditioningSetMask): NextDiT Sampler applies every prompt to the whole image",
    "mask_strength": "a mask (ConditioningSetMask): NextDiT Sampler applies every prompt to the whole image",
    "gligen": "GLIGEN boxes (GLIGENTextBoxApply): NextDiT Sampler has no GLIGEN",
    "hooks": "conditioning hooks (Cond Set Props / hook nodes): NextDiT Sampler applies no hooks",
    "clip_start_percent": "a scheduled text-encoder hook (hook keyframes): NextDiT Sampler applies no hooks",
    "clip_end_percent": "a scheduled text-encoder hook (hook keyframes): NextDiT Sampler applies no hooks",
    "guidance": "a guidance value (FluxGuidance): NextDiT Sampler takes the guidance scale from its own "
                "guidance input; set it there",
}


@dataclass(frozen=True)
class PromptEntry:
    """One CONDITIONING entry read for sampling: its tensors, its weight among the entries applied
    at a step (core's ``strength``, 1 unless set), and the share of the sampling it applies to
    (core's ``start_percent`` / ``end_percent``: 0 is the start of sampling, 1 its end), and the
    ControlNets core's Apply ControlNet put on it (its ``control`` chain, oldest first)."""
    batch: PromptBatch
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    controls: tuple = ()


def _check_keys(extras: dict, index: int, what: str) -> None:
    for key in extras:
        if key in READ_KEYS:
            continue
        reason = REFUSED_KEYS.get(key, f"the conditioning key {key!r}, added by another node, which "
                                       f"NextDiT Sampler does not apply")
        raise ValueError(f"{what} entry {index} carries {reason}; {_CORE_PATH}")


def _number(extras: dict, key: str, default: float, index: int, what: str) -> float:
    value = extras.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or \
            value in (float("inf"), float("-inf")):
        raise ValueError(f"{what} entry {index}: {key} must be a finite number; got {value!r}")
    return float(value)


def read_entries(conditioning, batch_size: int, cap_dim: int, clip_dim: int | None,
                 what: str = "positive") -> list[PromptEntry]:
    """Every CONDITIONING entry as a PromptEntry of ``batch_size``, checked against the model's widths;
    ValueError for what the pack's sampler cannot apply (areas, masks, GLIGEN, ...: see
    ``REFUSED_KEYS``), naming the node that added it and what to use instead.

    ``clip_dim`` None (Lumina-2 shaped weights) drops the pooled vectors, which those weights ignore.
    """
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{what} conditioning is empty or not a CONDITIONING list; "
                         f"connect the output of a text encode node")
    entries = []
    for index, entry in enumerate(conditioning):
        batch = _entry_to_batch(entry, batch_size, index, what)
        extras = entry[1] or {}
        _check_keys(extras, index, what)
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
        strength = _number(extras, "strength", 1.0, index, what)
        start, end = (_number(extras, key, default, index, what)
                      for key, default in (("start_percent", 0.0), ("end_percent", 1.0)))
        if strength <= 0 or not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"{what} entry {index}: strength must be positive and 0 <= start_percent <= "
                             f"end_percent <= 1; got strength {strength:g}, start {start:g}, end {end:g}")
        entries.append(PromptEntry(PromptBatch(batch.feats, batch.mask, pooled, batch.weights), strength, start, end,
                                   _controls(extras.get("control"), index, what)))
    return entries


def _controls(control, index: int, what: str) -> tuple:
    """The chain of ControlNets an entry carries (oldest first), checked to be the pack's own."""
    if control is None:
        return ()
    if not callable(getattr(control, "chain", None)):
        raise ValueError(f"{what} entry {index} carries a ControlNet of another model family "
                         f"({type(control).__name__}); load a Next-DiT ControlNet with NextDiT ControlNet Loader")
    return tuple(control.chain())


def prompt_batches(conditioning, batch_size: int, cap_dim: int, clip_dim: int | None,
                   what: str = "positive") -> list[PromptBatch]:
    """The PromptBatches of plain prompts, for code that applies every entry everywhere (training,
    core's model conditions); time ranges and strengths are refused there."""
    entries = read_entries(conditioning, batch_size, cap_dim, clip_dim, what)
    if any((e.strength, e.start_percent, e.end_percent) != (1.0, 0.0, 1.0) or e.controls for e in entries):
        raise ValueError(f"{what} conditioning has entries with a time range, strength or ControlNet; they "
                         f"apply to sampling only")
    return [entry.batch for entry in entries]


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
    weights = None
    if any(b.weights is not None for b in batches):   # unweighted prompts and padding weigh 1
        weights = torch.cat([torch.nn.functional.pad(torch.ones_like(b.mask, dtype=torch.float32)
                                                     if b.weights is None else b.weights,
                                                     (0, longest - b.mask.shape[1]), value=1.0) for b in batches])
    return PromptBatch(feats, mask, pooled, weights)


def is_conditioning(value) -> bool:
    """A CONDITIONING is a list of [tensor, dict] entries (a list of CONDITIONINGs is not)."""
    return bool(value) and isinstance(value[0], (list, tuple)) and len(value[0]) == 2 \
        and isinstance(value[0][0], Tensor)


# ---- a file of conditionings (training prompts encoded once) -----------------------------------

def save_conditionings(path: str | Path, positives: list, negative) -> Path:
    """Write training prompts as one safetensors file: ``positive.{i}.cap_feats`` (L, cap_dim) with
    only real tokens, ``positive.{i}.pooled`` (clip_dim) if any; the negative the same way under
    ``negative.`` (one shared) or ``negative.{i}.`` (one per prompt)."""
    from safetensors.torch import save_file

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
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata={"nextdit_conditionings": "1"})
    return Path(path)


def load_conditionings(path: str | Path) -> tuple[list, object]:
    """(positives, negative) as CONDITIONINGs from a file written by ``save_conditionings``."""
    from safetensors.torch import load_file

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
