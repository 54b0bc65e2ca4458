"""From the keys of any Next-DiT file to the official keys (the module names of the model).

- Wrapper prefixes: DDP ``module.`` (possibly repeated), torch.compile ``_orig_mod.``, LDM/ComfyUI
  ``model.diffusion_model.``, diffusers/HF ``transformer.``, a bare ``model.`` wrapper; in an
  all-in-one file only the diffusion model's part is kept.
- The diffusers ``Lumina2Transformer2DModel`` layout (diffusers' ``convert_lumina2_to_diffusers``
  in ``loaders/single_file_utils.py`` read backwards, plus the two NewBie keys of diffusers PR
  12803). The one non-rename: diffusers splits the fused ``attention.qkv`` into
  ``attn.to_q/to_k/to_v``; they are concatenated again in q, k, v order, at whatever sizes the
  file's shapes say (2304/768/768 for NewBie: 24 query heads and 8 kv heads of 96), lazily: the
  three parts are read and concatenated only when that one tensor is loaded.
- ``norm_final.weight``: in real checkpoints, never used by the forward (ComfyUI dropped it in PR
  #11545; diffusers' converter pops it).

Renaming re-labels the same tensor refs and never reads data.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, TypeVar

import torch

from ..files import keys
from ..files.errors import WeightsError
from ..files.tensors import TensorRef
from .params import BLOCK_KEY

log = logging.getLogger(__name__)
V = TypeVar("V")

UNUSED_KEYS = ("norm_final.weight",)
# Prefixes that wrap a whole model: DDP (`module.`, possibly repeated), torch.compile
# (`_orig_mod.`), LDM/ComfyUI checkpoints (`model.diffusion_model.`), diffusers/HF
# (`transformer.`), a wrapper module holding the model as `inner_model` (the NewBie transformer
# class of diffusers PR #12789), and a bare `model.` wrapper. Stripped only when every key carries them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.diffusion_model.", "diffusion_model.",
                    "transformer.", "inner_model.", "model.")
# In an all-in-one file these hold the diffusion model; every other top-level group is another
# component (`text_encoders.`, `vae.`, `first_stage_model.`, `cond_stage_model.`, ...) and dropped.
DIT_CONTAINERS = ("model.diffusion_model.", "diffusion_model.")
# Per-key wrappers: never the name of a real sub-module, so safe to strip key by key.
_PER_KEY = ("module.", "_orig_mod.")


def _strip_per_key(key: str) -> str:
    return keys.strip_leading(key, _PER_KEY)


def strip_prefixes(state: Mapping[str, V]) -> tuple[dict[str, V], list[str]]:
    """Keys without wrapper prefixes, and the names of the all-in-one components dropped.

    Handles `module.` (also repeated), `_orig_mod.`, `model.diffusion_model.`, `diffusion_model.`,
    `transformer.`, `model.` (only where it wraps everything) and any combination; in an all-in-one
    file (DiT plus `text_encoders.*`, `vae.*`, `first_stage_model.*`, ...) only the DiT part is kept.
    Values are the same objects as in `state`.
    """
    items = {_strip_per_key(k): v for k, v in state.items()}
    dropped: set[str] = set()
    while items:
        keys = list(items)
        common = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in keys)), None)
        if common is not None:
            items = {_strip_per_key(k[len(common):]): v for k, v in items.items()}
            continue
        container = next((c for c in DIT_CONTAINERS if any(k.startswith(c) for k in keys)), None)
        if container is None:
            break
        rest = [k for k in keys if not k.startswith(container)]
        dropped.update(k.split(".", 1)[0] for k in rest)
        items = {k: v for k, v in items.items() if k.startswith(container)}
    return items, sorted(dropped)



# ---- the diffusers layout ----------------------------------------------------------------------

_BLOCK = rf"({BLOCK_KEY})\."
# (diffusers pattern, official replacement), applied to each key; first match wins.
_RENAMES = [
    (_BLOCK + r"attn\.to_out\.0\.", r"\1.attention.out."),
    (_BLOCK + r"attn\.norm_q\.", r"\1.attention.q_norm."),
    (_BLOCK + r"attn\.norm_k\.", r"\1.attention.k_norm."),
    (_BLOCK + r"feed_forward\.linear_1\.", r"\1.feed_forward.w1."),
    (_BLOCK + r"feed_forward\.linear_2\.", r"\1.feed_forward.w2."),
    (_BLOCK + r"feed_forward\.linear_3\.", r"\1.feed_forward.w3."),
    (_BLOCK + r"norm1\.linear\.", r"\1.adaLN_modulation.1."),   # modulated blocks
    (_BLOCK + r"norm1\.norm\.", r"\1.attention_norm1."),         # modulated blocks
    (_BLOCK + r"norm1\.", r"\1.attention_norm1."),               # context refiner (plain RMSNorm)
    (_BLOCK + r"norm2\.", r"\1.attention_norm2."),
    (r"time_caption_embed\.timestep_embedder\.linear_1\.", "t_embedder.mlp.0."),
    (r"time_caption_embed\.timestep_embedder\.linear_2\.", "t_embedder.mlp.2."),
    (r"time_caption_embed\.caption_embedder\.", "cap_embedder."),
    (r"time_caption_embed\.clip_text_pooled_proj\.", "clip_text_pooled_proj."),
    (r"time_caption_embed\.time_text_embed\.", "time_text_embed."),
    (r"norm_out\.linear_1\.", "final_layer.adaLN_modulation.1."),
    (r"norm_out\.linear_2\.", "final_layer.linear."),
]
_COMPILED = [(re.compile("^" + pattern), replacement) for pattern, replacement in _RENAMES]
_QKV = re.compile("^" + _BLOCK + r"attn\.to_([qkv])\.weight$")


def is_diffusers_layout(keys) -> bool:
    """True for keys (prefixes already stripped) in the diffusers Lumina-2 layout."""
    return any(k.startswith(("time_caption_embed.", "norm_out.")) or ".attn.to_q." in k for k in keys)


def _fused(parts: list[TensorRef]) -> TensorRef:
    q = parts[0]
    rows = sum(part.shape[0] for part in parts)

    def reader(dtype, device, own):
        # Parts read into fresh memory (not mapped), so only the fused copy stays.
        return torch.cat([part.load(dtype, device, own=True) for part in parts], dim=0)

    return TensorRef(q.file, (rows, *q.shape[1:]), q.dtype, reader)


def to_official(state: Mapping[str, TensorRef]) -> dict[str, TensorRef]:
    """The same tensors under official keys; keys no rule knows pass through unchanged (so the
    strict load reports them). Nothing is read from disk here."""
    out: dict[str, TensorRef] = {}
    qkv: dict[str, dict[str, TensorRef]] = {}
    for key, ref in state.items():
        match = _QKV.match(key)
        if match:
            qkv.setdefault(match.group(1), {})[match.group(2)] = ref
            continue
        for pattern, replacement in _COMPILED:
            new, count = pattern.subn(replacement, key)
            if count:
                key = new
                break
        out[key] = ref
    for block, parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{block}.attention.qkv.weight"] = _fused([parts["q"], parts["k"], parts["v"]])
        else:   # incomplete: keep the diffusers names so the error lists them
            out.update({f"{block}.attn.to_{name}.weight": ref for name, ref in parts.items()})
    return out


def official_refs(path, raw: Mapping[str, TensorRef]) -> dict[str, TensorRef]:
    """`raw` under official Next-DiT keys: wrappers stripped, the DiT part of an all-in-one file,
    the diffusers layout converted, unused keys dropped. Raises WeightsError if the file is not a
    Next-DiT at all (saying what it looks like)."""
    state, dropped = strip_prefixes(raw)
    if dropped:
        log.info("%s: all-in-one file; using its diffusion model, ignoring %s", Path(path).name, ", ".join(dropped))
    if is_diffusers_layout(state):
        state = to_official(state)
    for key in UNUSED_KEYS:
        state.pop(key, None)
    if not any(k in state for k in ("x_embedder.weight", "cap_embedder.1.weight")):
        prefix = _unknown_prefix(state)
        if prefix is not None:
            raise WeightsError(path, f"the keys look like a Next-DiT's but sit under {prefix!r}, a wrapper "
                                     f"this loader does not know; save the model's own state_dict, or "
                                     f"strip {prefix!r} from every key")
        what = keys.describe_contents({k: v.shape for k, v in raw.items()})
        raise WeightsError(path, f"not a Next-DiT (NewBie / Lumina-2) diffusion model: the file looks like {what}.")
    return state


def _unknown_prefix(state: Mapping[str, V]) -> str | None:
    """The prefix in front of the Next-DiT's own keys (``wrapper.x_embedder.weight``), if any."""
    for key in state:
        for own in ("x_embedder.weight", "cap_embedder.1.weight"):
            if key.endswith("." + own):
                return key[:-len(own)]
    return None
