"""The two NewBie text encoders as transformers modules, and how the official code calls them.

- Gemma 3 (4B-it's text model) gives ``cap_feats``: ``hidden_states[-2]`` (the output of the
  second-to-last decoder layer, before the final norm), BOS included, right padding, at most
  512 tokens (official ``max_length=512``; a longer prompt is cut and reported).
- Jina CLIP v2's text tower (``JinaEmbeddingsV3Model`` without its pooler) gives the pooled
  vector: the mean of the last hidden states over the non-pad tokens, ``<s>`` and ``</s>``
  included, not normalised (``get_text_features`` of jinaai/jina-clip-implementation, which the
  official ``finetune.py`` calls).

Real-model configs are fixed here (single files carry none); smaller files get their sizes from
tensor shapes (``text/loading.py``) and everything else from these same values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

GEMMA_MAX_TOKENS = 512    # official tokenizer call: max_length=512, truncation=True
JINA_MAX_TOKENS = 2048    # official training: clip_tokenizer(..., max_length=2048, truncation=True)

# google/gemma-3-4b-it, text model (its config.json `text_config`; transformers Gemma3TextConfig names).
GEMMA_3_4B_SHAPES = dict(
    vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256,
)
# What tensor shapes cannot tell. Every 6th layer is global (full attention, RoPE θ 1e6 with
# linear scaling 8); the others are local (sliding window 1024, θ 1e4). The HF class default
# sliding window (4096) is wrong for this model. Attention scale 1/sqrt(256) = 1/16.
GEMMA_3_BEHAVIOUR = dict(
    sliding_window=1024,
    sliding_window_pattern=6,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=131072,
    pad_token_id=0, eos_token_id=1, bos_token_id=2,
)
# jinaai/jina-clip-v2 text tower = jina-embeddings-v3's XLM-RoBERTa (jinaai/jina-embeddings-v3 config.json).
JINA_CLIP_V2_SHAPES = dict(
    vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, type_vocab_size=1,
)
JINA_BEHAVIOUR = dict(
    rope_theta=20000.0, layer_norm_eps=1e-5, hidden_act="gelu",
    max_position_embeddings=8194, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
JINA_HEAD_DIM = 64        # rotary dim of the real model; the rule for files that do not say


def gemma_layer_types(num_layers: int, pattern: int) -> list[str]:
    """Gemma 3's interleave: every ``pattern``-th layer is global, the others sliding."""
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]


def gemma_config(shapes: dict, behaviour: dict | None = None):
    """``Gemma3TextConfig`` from the shape values (keys of ``GEMMA_3_4B_SHAPES``) and behaviour
    values (keys of ``GEMMA_3_BEHAVIOUR``; missing ones take the real model's)."""
    from transformers import Gemma3TextConfig

    values = copy.deepcopy(GEMMA_3_BEHAVIOUR)
    values.update(copy.deepcopy(behaviour or {}))
    pattern = values.pop("sliding_window_pattern")
    layer_types = values.pop("layer_types", None) or gemma_layer_types(shapes["num_hidden_layers"], pattern)
    return Gemma3TextConfig(**shapes, **values, layer_types=layer_types, attn_implementation="sdpa")


def jina_config(shapes: dict, behaviour: dict | None = None):
    """``JinaEmbeddingsV3Config`` from shape values (keys of ``JINA_CLIP_V2_SHAPES``) and
    behaviour values (keys of ``JINA_BEHAVIOUR``; missing ones take the real model's)."""
    from transformers import JinaEmbeddingsV3Config

    values = dict(JINA_BEHAVIOUR)
    values.update(behaviour or {})
    theta = values.pop("rope_theta")
    return JinaEmbeddingsV3Config(**shapes, **values, attn_implementation="sdpa",
                                  rope_parameters={"rope_type": "default", "rope_theta": theta})


def build_gemma(config) -> torch.nn.Module:
    """An empty ``Gemma3TextModel`` (uninitialised parameters, real buffers) to load weights into."""
    from transformers import Gemma3TextModel
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return Gemma3TextModel(config).eval().requires_grad_(False)


def build_jina(config) -> torch.nn.Module:
    """An empty ``JinaEmbeddingsV3Model`` without the pooler (the HF pooler is first-token
    dense+tanh; NewBie mean-pools instead)."""
    from transformers import JinaEmbeddingsV3Model
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return JinaEmbeddingsV3Model(config, add_pooling_layer=False).eval().requires_grad_(False)


# ---- encoding ---------------------------------------------------------------------------------

Tokenizer = Callable[[str], list]


@dataclass
class Encoder:
    """A loaded text encoder: the module, its tokenizer, and where its weights came from."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    source: str = ""


def truncate(ids: list[int], max_tokens: int, keep_last: bool) -> tuple[list[int], int]:
    """``ids`` cut to ``max_tokens`` (keeping the final special token when ``keep_last``, as HF
    truncation keeps ``</s>``), and how many tokens were cut."""
    cut = max(0, len(ids) - max_tokens)
    if not cut:
        return ids, 0
    return (ids[:max_tokens - 1] + ids[-1:] if keep_last else ids[:max_tokens]), cut


def right_padded(batch: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """(input_ids [B,L] long, attention_mask [B,L] long) with padding at the end."""
    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, :len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_finite(values: Tensor, what: str, model: torch.nn.Module) -> None:
    if not torch.isfinite(values).all():
        dtype = next(model.parameters()).dtype
        raise FloatingPointError(
            f"{what} produced NaN/inf in {dtype}; load the text encoders with dtype "
            f"{'fp32' if dtype != torch.float32 else 'fp32 (already) — the weights may be damaged'}"
            f" (fp16 overflows in Gemma 3).")


@dataclass
class GemmaOutput:
    features: Tensor       # [B, L, hidden] float32 on the CPU; rows past mask are padding
    mask: Tensor           # [B, L] long, 1 = real token (real tokens first)
    cut: list[int]         # tokens cut per text


def gemma_features(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """What the Next-DiT reads from Gemma: ``hidden_states[-2]`` in float32, [B, L, hidden]."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-2].float()


@torch.no_grad()
def encode_gemma(encoder: Encoder, texts: list[str], max_tokens: int = GEMMA_MAX_TOKENS) -> GemmaOutput:
    """Gemma ``hidden_states[-2]`` for each text (BOS included, right padding)."""
    model = encoder.model
    batch, cut = zip(*(truncate(encoder.tokenizer(text), max_tokens, keep_last=False) for text in texts))
    input_ids, mask = right_padded(list(batch), model.config.pad_token_id, _model_device(model))
    features = gemma_features(model, input_ids, mask)
    _check_finite(features[mask.bool()], "the Gemma text encoder", model)
    return GemmaOutput(features.cpu(), mask.cpu(), list(cut))


@dataclass
class JinaOutput:
    pooled: Tensor         # [B, hidden] float32 on the CPU
    cut: list[int]


@torch.no_grad()
def encode_jina(encoder: Encoder, texts: list[str], max_tokens: int = JINA_MAX_TOKENS) -> JinaOutput:
    """Jina's last hidden states mean-pooled over the non-pad tokens (``<s>``/``</s>`` included)."""
    model = encoder.model
    batch, cut = zip(*(truncate(encoder.tokenizer(text), max_tokens, keep_last=True) for text in texts))
    input_ids, mask = right_padded(list(batch), model.config.pad_token_id, _model_device(model))
    hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()  # [B, L, D]
    weights = mask.to(hidden.dtype).unsqueeze(-1)                                       # [B, L, 1]
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)                          # [B, D]
    _check_finite(pooled, "the Jina text encoder", model)
    return JinaOutput(pooled.cpu(), list(cut))


@dataclass
class TextEncoding:
    """One prompt encoded: what CONDITIONING carries."""

    cap_feats: Tensor          # [1, L, gemma hidden] float32 CPU
    attention_mask: Tensor     # [1, L] long, all ones (real tokens only)
    pooled: Tensor             # [1, jina hidden] float32 CPU
    warnings: list[str] = field(default_factory=list)


def truncation_warnings(gemma_cut: int, jina_cut: int) -> list[str]:
    """Human-readable truncation notes (empty when nothing was cut)."""
    notes = []
    if gemma_cut:
        notes.append(f"Gemma text too long: {gemma_cut} tokens were cut (the model reads at most "
                     f"{GEMMA_MAX_TOKENS} tokens including the system prompt); shorten the prompt "
                     f"or the system prompt.")
    if jina_cut:
        notes.append(f"Jina text too long: {jina_cut} tokens were cut (at most {JINA_MAX_TOKENS} "
                     f"tokens are read).")
    return notes


def encode_pair(gemma: Encoder, jina: Encoder, gemma_text: str, jina_text: str) -> TextEncoding:
    """Both encoders on one prompt: Gemma features of ``gemma_text``, Jina pooled ``jina_text``."""
    g = encode_gemma(gemma, [gemma_text])
    j = encode_jina(jina, [jina_text])
    return TextEncoding(cap_feats=g.features, attention_mask=g.mask, pooled=j.pooled,
                        warnings=truncation_warnings(g.cut[0], j.cut[0]))
