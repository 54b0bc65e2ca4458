"""diffusers ``Lumina2Transformer2DModel`` key layout -> official Next-DiT keys.

The renaming table is research `newbie-model.md` §3.3 read backwards (plus the two NewBie keys of
diffusers PR 12803). The one non-rename: diffusers splits the fused ``attention.qkv`` into
``attn.to_q/to_k/to_v``; we concatenate them again in q, k, v order. The split sizes are whatever
the file's shapes say (2304/768/768 for NewBie widths: 24 query heads and 8 kv heads of 96), so
GQA needs no constant here. Fusing is lazy: the three parts are read and concatenated only when
that one tensor is loaded.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from .files import TensorRef

_BLOCK = r"((?:layers|noise_refiner|context_refiner)\.\d+)\."
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
