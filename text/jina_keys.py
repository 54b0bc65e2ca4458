"""Jina CLIP v2 text-tower keys: the original checkpoint's LoRA merge and the rename to transformers.

Layouts:
- original jina-clip-v2 (jinaai/jina-clip-implementation, ``hf_model.py``): the text tower under
  ``text_model.transformer.roberta.<flash name>``, and with the ``retrieval.query`` LoRA
  parametrisation (``torch.nn.utils.parametrize``, jina's ``modeling_lora.py``) each
  Linear/Embedding weight is ``<module>.parametrizations.weight.original`` plus
  ``....weight.0.lora_A/lora_B`` holding one adapter per task along dim 0.
- ComfyUI single file: ``model.<flash name>`` (LoRA already merged or absent).
- flash names (jina's XLM-RoBERTa) -> ``JinaEmbeddingsV3Model`` names: ``emb_ln`` ->
  ``embeddings.LayerNorm``; ``encoder.layers.N.mixer.Wqkv`` -> ``layers.N.self_attn.{q,k,v}_proj``
  (``chunk(3, dim=0)``); ``mixer.out_proj`` -> ``self_attn.o_proj``; ``norm1`` ->
  ``post_attention_layernorm``; ``mlp.fc1/fc2`` same; ``norm2`` -> ``post_mlp_layernorm``.

LoRA merge (jina's ``LoRAParametrization``; scaling = alpha / rank):
- Linear, W [out, in]: A [tasks, rank, in], B [tasks, out, rank]; W' = W + (B[t] @ A[t]) * scaling.
- Embedding, W [num, dim]: A [tasks, num, rank], B [tasks, rank, dim]; W' = W + (A[t] @ B[t]) * scaling.
"""

from __future__ import annotations

import re

import torch

ORIGINAL = ".parametrizations.weight.original"
LORA_A = ".parametrizations.weight.0.lora_A"
LORA_B = ".parametrizations.weight.0.lora_B"
DEFAULT_TASK = "retrieval.query"   # jina-clip-v2's default_lora_task
DEFAULT_LORA_ALPHA = 4.0           # jina-clip-v2 config: lora_alpha 4 (rank 4)

_FLASH_RENAMES = (
    (re.compile(r"^emb_ln\."), "embeddings.LayerNorm."),
    (re.compile(r"^encoder\.layers\.(\d+)\.mixer\.out_proj\."), r"layers.\1.self_attn.o_proj."),
    (re.compile(r"^encoder\.layers\.(\d+)\.norm1\."), r"layers.\1.post_attention_layernorm."),
    (re.compile(r"^encoder\.layers\.(\d+)\.norm2\."), r"layers.\1.post_mlp_layernorm."),
    (re.compile(r"^encoder\.layers\.(\d+)\.mlp\."), r"layers.\1.mlp."),
)
_TO_FLASH = (
    (re.compile(r"^embeddings\.LayerNorm\."), "emb_ln."),
    (re.compile(r"^layers\.(\d+)\.self_attn\.o_proj\."), r"encoder.layers.\1.mixer.out_proj."),
    (re.compile(r"^layers\.(\d+)\.post_attention_layernorm\."), r"encoder.layers.\1.norm1."),
    (re.compile(r"^layers\.(\d+)\.post_mlp_layernorm\."), r"encoder.layers.\1.norm2."),
    (re.compile(r"^layers\.(\d+)\.mlp\."), r"encoder.layers.\1.mlp."),
)
_WQKV = re.compile(r"^encoder\.layers\.(\d+)\.mixer\.Wqkv\.(weight|bias)$")


def has_lora(keys) -> bool:
    return any(key.endswith(ORIGINAL) for key in keys)


def lora_delta(module: str, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
               task: int, alpha: float) -> torch.Tensor:
    """The float32 update of one parametrised weight; ValueError if the shapes do not fit."""
    a, b = lora_a.float(), lora_b.float()
    if a.dim() == 2:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if task >= a.shape[0]:
        raise ValueError(f"{module}: LoRA holds {a.shape[0]} task adapter(s), task index {task} asked")
    a, b = a[task], b[task]
    if module.endswith("_embeddings"):  # word_embeddings, token_type_embeddings
        rank = a.shape[1]
        fits = a.shape[0] == weight.shape[0] and b.shape == (rank, weight.shape[1])
        delta = a @ b if fits else None
    else:
        rank = a.shape[0]
        fits = a.shape[1] == weight.shape[1] and b.shape == (weight.shape[0], rank)
        delta = b @ a if fits else None
    if delta is None:
        raise ValueError(f"{module}: LoRA shapes A {tuple(lora_a.shape)}, B {tuple(lora_b.shape)} do "
                         f"not fit the weight {tuple(weight.shape)}")
    return delta * (alpha / rank)


def merge_lora(state: dict[str, torch.Tensor], task: int = 0,
               alpha: float = DEFAULT_LORA_ALPHA) -> dict[str, torch.Tensor]:
    """``state`` with every LoRA-parametrised weight replaced by its merged ``<module>.weight``
    (float32: the caller casts once, to the dtype the model runs in)."""
    merged = {}
    for key, tensor in state.items():
        if key.endswith((LORA_A, LORA_B)):
            continue
        if not key.endswith(ORIGINAL):
            merged[key] = tensor
            continue
        module = key[: -len(ORIGINAL)]
        try:
            lora_a, lora_b = state[module + LORA_A], state[module + LORA_B]
        except KeyError:
            raise ValueError(f"{module}: LoRA-parametrised weight without its lora_A/lora_B") from None
        delta = lora_delta(module, tensor, lora_a, lora_b, task, alpha)
        merged[module + ".weight"] = tensor.float() + delta
    stray = [k for k in state if k.endswith((LORA_A, LORA_B)) and
             k.rsplit(".parametrizations.", 1)[0] + ORIGINAL not in state]
    if stray:
        raise ValueError(f"LoRA tensors without a parametrised weight: {stray[:3]}")
    return merged


def is_flash_layout(keys) -> bool:
    return any(key.startswith(("emb_ln.", "encoder.layers.")) for key in keys)


def flash_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename jina's XLM-RoBERTa (flash) keys to ``JinaEmbeddingsV3Model`` keys; other keys are
    kept as they are (the strict load reports them)."""
    out = {}
    for key, tensor in state.items():
        match = _WQKV.match(key)
        if match:
            layer, kind = match.groups()
            if tensor.shape[0] % 3:
                raise ValueError(f"{key}: first dimension {tensor.shape[0]} is not 3 x hidden")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[f"layers.{layer}.self_attn.{name}.{kind}"] = part.contiguous()
            continue
        for pattern, replacement in _FLASH_RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        out[key] = tensor
    return out


def transformers_to_flash(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``flash_to_transformers`` (q, k, v concatenated back into ``Wqkv``)."""
    out = {}
    for key, tensor in state.items():
        match = re.match(r"^layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if match:
            layer, part, kind = match.groups()
            if part == "q":
                out[f"encoder.layers.{layer}.mixer.Wqkv.{kind}"] = torch.cat(
                    [state[f"layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
            continue
        for pattern, replacement in _TO_FLASH:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        out[key] = tensor
    return out


def lora_settings(config: dict) -> tuple[int, float]:
    """(task index, alpha) from a jina-clip-v2 style config (searched at any depth); the default
    task ``retrieval.query``'s index in ``lora_adaptations`` (0 if absent) and ``lora_alpha``
    (jina-clip-v2's 4 if absent)."""
    found: dict = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("lora_adaptations", "lora_alpha", "default_lora_task") and key not in found:
                    found[key] = value
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    adaptations = found.get("lora_adaptations") or [DEFAULT_TASK]
    task_name = found.get("default_lora_task") or DEFAULT_TASK
    task = adaptations.index(task_name) if task_name in adaptations else 0
    return task, float(found.get("lora_alpha") or DEFAULT_LORA_ALPHA)
