"""Tiny Gemma 3 / Jina CLIP v2 text encoders, tokenizers and weight files in every real layout.

Owner: text-encoder engineer. Everything is built here: SentencePiece models trained in memory on
a few sentences (Gemma-style BPE with byte fallback, pad 0 / eos 1 / bos 2; Jina-style unigram
with XLM-R ids <s> 0 / <pad> 1 / </s> 2 / <unk> 3), random weights with transformers' own names,
and writers for each layout named in docs/newbie-image.md §5.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from nextdit_nodes.text import towers as te

SENTENCES = [
    "a girl with long blue hair and red eyes", "two characters standing in a garden at night",
    "<character_1> <n>hatsune miku</n> <gender>1girl</gender> </character_1>",
    "masterpiece, best quality, 1girl, solo, smile", "the quick brown fox jumps over the lazy dog",
    "anime style illustration of a cat wearing a hat", "You are an assistant designed to generate",
    "high-quality anime images based on xml format prompts. <Prompt Start>",
]

GEMMA_SHAPES = dict(vocab_size=352, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)
# One global layer among the three, so both RoPE kinds (linear-scaled θ 1e6, θ 1e4) are used.
GEMMA_FILE_CONFIG = {"sliding_window_pattern": 2, "query_pre_attn_scalar": 16}
JINA_SHAPES = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=96, type_vocab_size=1)
JINA_FILE_CONFIG = {"num_attention_heads": 4}


@functools.lru_cache(maxsize=None)
def gemma_spm() -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10), model_writer=out, vocab_size=340, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, bos_piece="<bos>", eos_piece="<eos>",
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=True, character_coverage=1.0, minloglevel=2)
    return out.getvalue()


@functools.lru_cache(maxsize=None)
def jina_spm() -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10), model_writer=out, vocab_size=60, model_type="unigram",
        bos_id=0, pad_id=1, eos_id=2, unk_id=3, minloglevel=2)
    return out.getvalue()


def spm_ids(proto: bytes, text: str) -> list[int]:
    """Plain SentencePiece ids of ``text`` (no specials): the test's own tokenisation."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto)
    return list(processor.encode(text))


def _randomised(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    # Every tensor random (norm weights too, so the (1 + w) RMSNorm and LayerNorms matter).
    generator = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=generator) * 0.2).contiguous()
            for k, v in model.state_dict().items()}


def gemma_reference(seed: int = 0):
    """(Gemma3TextModel with random weights, its state dict) built straight from transformers."""
    from transformers import Gemma3TextModel

    config = te.gemma_config(GEMMA_SHAPES, GEMMA_FILE_CONFIG)
    model = Gemma3TextModel(config).eval()
    state = _randomised(model, seed)
    model.load_state_dict(state)
    return model, state


def jina_reference(seed: int = 1):
    """(JinaEmbeddingsV3Model without pooler, random weights, its state dict)."""
    from transformers import JinaEmbeddingsV3Model

    config = te.jina_config(JINA_SHAPES)
    model = JinaEmbeddingsV3Model(config, add_pooling_layer=False).eval()
    state = _randomised(model, seed)
    model.load_state_dict(state)
    return model, state


def _uint8(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _junk(shape, seed=5) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---- Gemma layouts ----------------------------------------------------------------------------

GEMMA_LAYOUTS = ("comfy", "hf_text", "hf_bare", "hf_multimodal_legacy", "hf_multimodal", "newbie_converter")


def _save_gemma_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    (folder / "tokenizer.model").write_bytes(gemma_spm())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False}))
    # Also save the tokenizer.json transformers makes of it, as the real folder has one.
    AutoTokenizer.from_pretrained(str(folder), local_files_only=True).save_pretrained(str(folder))


def write_gemma(path: Path, state: dict, layout: str, with_config: bool = True,
                with_tokenizer: bool = True) -> Path:
    """Write the Gemma text weights ``state`` (Gemma3TextModel keys) in ``layout``; returns the
    file or folder to load."""
    path = Path(path)
    config = {"model_type": "gemma3_text", **GEMMA_FILE_CONFIG}
    if layout == "comfy":
        tensors = {"model." + k: v for k, v in state.items()}
        if with_tokenizer:
            tensors["spiece_model"] = _uint8(gemma_spm())
        save_file(tensors, str(path), metadata={"config": json.dumps(config)} if with_config else None)
        return path
    vision = {"vision_tower.vision_model.embeddings.patch_embedding.weight": _junk((8, 3, 2, 2)),
              "multi_modal_projector.mm_input_projection_weight": _junk((8, 64))}
    if layout == "newbie_converter":   # ComfyUI-Newbie-Nodes convert_text_encoders.py (Gemma3Model)
        tensors = {**{"language_model." + k: v for k, v in state.items()}, **vision}
        metadata = {"format": "newbie_text_encoder", "config": json.dumps({"text_config": config}),
                    "tokenizer_files": json.dumps(_gemma_tokenizer_files())}
        save_file(tensors, str(path), metadata=metadata)
        return path
    path.mkdir(parents=True, exist_ok=True)
    if layout == "hf_text":        # Gemma3ForCausalLM.save_pretrained
        shards = [{"model." + k: v for k, v in state.items()}]
    elif layout == "hf_bare":      # Gemma3TextModel.save_pretrained
        shards = [dict(state)]
    elif layout == "hf_multimodal_legacy":   # google/gemma-3-4b-it shards
        text = {"language_model.model." + k: v for k, v in state.items()}
        keys = sorted(text)
        shards = [{k: text[k] for k in keys[: len(keys) // 2]},
                  {**{k: text[k] for k in keys[len(keys) // 2:]}, **vision}]
        config = {"model_type": "gemma3", "text_config": config}
    elif layout == "hf_multimodal":          # Gemma3ForConditionalGeneration, newer transformers
        text = {"model.language_model." + k: v for k, v in state.items()}
        shards = [{**text, **{"model." + k: v for k, v in vision.items()},
                   "lm_head.weight": state["embed_tokens.weight"].clone()}]
        config = {"model_type": "gemma3", "text_config": config}
    else:
        raise ValueError(layout)
    _save_shards(path, shards)
    if with_config:
        (path / "config.json").write_text(json.dumps(config))
    if with_tokenizer:
        _save_gemma_tokenizer(path)
    return path


def _gemma_tokenizer_files() -> dict[str, str]:
    import base64
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        _save_gemma_tokenizer(Path(folder))
        return {p.name: base64.b64encode(p.read_bytes()).decode("ascii") for p in Path(folder).iterdir()}


def _save_shards(folder: Path, shards: list[dict]) -> None:
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"))
        return
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        weight_map.update({k: name for k in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


# ---- Jina layouts -----------------------------------------------------------------------------

JINA_LAYOUTS = ("comfy", "original_lora", "transformers")
LORA_TASKS = ["retrieval.passage", "retrieval.query"]   # the query adapter is index 1 here
LORA_RANK, LORA_ALPHA = 4, 4.0


def to_flash(state: dict) -> dict:
    """transformers JinaEmbeddingsV3Model keys -> jina's XLM-RoBERTa (flash) keys, written from
    the flash -> transformers names of text/jina_keys.py written out again (reverse direction)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("embeddings.LayerNorm."):
            out["emb_ln." + parts[-1]] = value
        elif key.startswith("embeddings."):
            out[key] = value
        elif ".self_attn.q_proj." in key:
            n, kind = parts[1], parts[-1]
            out[f"encoder.layers.{n}.mixer.Wqkv.{kind}"] = torch.cat(
                [state[f"layers.{n}.self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            n, rest = parts[1], ".".join(parts[2:])
            rest = (rest.replace("self_attn.o_proj", "mixer.out_proj")
                    .replace("post_attention_layernorm", "norm1").replace("post_mlp_layernorm", "norm2"))
            out[f"encoder.layers.{n}.{rest}"] = value
    return out


def lora_factors(flash: dict, seed: int = 7) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Non-zero LoRA factors (A, B) with a task axis for every Linear and Embedding weight."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    tasks = len(LORA_TASKS)
    for key, weight in flash.items():
        if not key.endswith(".weight") or weight.dim() != 2:
            continue
        module = key[: -len(".weight")]
        rows, cols = weight.shape
        if module.endswith("_embeddings"):   # A [tasks, num, r], B [tasks, r, dim]
            a, b = torch.randn(tasks, rows, LORA_RANK, generator=generator), torch.randn(tasks, LORA_RANK, cols, generator=generator)
        else:                                # A [tasks, r, in], B [tasks, out, r]
            a, b = torch.randn(tasks, LORA_RANK, cols, generator=generator), torch.randn(tasks, rows, LORA_RANK, generator=generator)
        factors[module] = (a * 0.1, b * 0.1)
    return factors


def hand_delta(module: str, a: torch.Tensor, b: torch.Tensor, task: int) -> torch.Tensor:
    """W' - W for one module, from jina's LoRAParametrization formula (scaling alpha / rank)."""
    scale = LORA_ALPHA / LORA_RANK
    return (a[task] @ b[task] if module.endswith("_embeddings") else b[task] @ a[task]) * scale


def write_jina(path: Path, state: dict, layout: str, with_config: bool = True,
               with_tokenizer: bool = True) -> Path:
    """Write the Jina text tower ``state`` (transformers keys) in ``layout``."""
    path = Path(path)
    flash = to_flash(state)
    if layout == "comfy":
        tensors = {"model." + k: v for k, v in flash.items()}
        if with_tokenizer:
            tensors["spiece_model"] = _uint8(jina_spm())
        save_file(tensors, str(path), metadata={"config": json.dumps(JINA_FILE_CONFIG)} if with_config else None)
        return path
    path.mkdir(parents=True, exist_ok=True)
    config: dict = dict(JINA_FILE_CONFIG)
    if layout == "transformers":
        save_file(dict(state), str(path / "model.safetensors"))
    elif layout == "original_lora":
        # Store W - delta as the parametrised original: merging must give back `state` exactly.
        task = LORA_TASKS.index("retrieval.query")
        tensors = {}
        factors = lora_factors(flash)
        prefix = "text_model.transformer.roberta."
        for key, value in flash.items():
            module = key[: -len(".weight")]
            if module in factors:
                a, b = factors[module]
                tensors[prefix + module + ".parametrizations.weight.original"] = value - hand_delta(module, a, b, task)
                tensors[prefix + module + ".parametrizations.weight.0.lora_A"] = a
                tensors[prefix + module + ".parametrizations.weight.0.lora_B"] = b
            else:
                tensors[prefix + key] = value
        tensors["vision_model.patch_embed.proj.weight"] = _junk((8, 3, 2, 2))
        tensors["logit_scale"] = torch.tensor(4.6)
        save_file(tensors, str(path / "model.safetensors"))
        config = {"model_type": "jina_clip", "text_config": {
            **JINA_FILE_CONFIG, "hf_model_config_kwargs": {"lora_adaptations": LORA_TASKS,
                                                           "lora_alpha": LORA_ALPHA, "lora_rank": LORA_RANK},
            "default_lora_task": "retrieval.query"}}
    else:
        raise ValueError(layout)
    if with_config:
        (path / "config.json").write_text(json.dumps(config))
    if with_tokenizer:
        _save_jina_tokenizer(path)
    return path


def _save_jina_tokenizer(folder: Path) -> None:
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(jina_spm())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    XLMRobertaTokenizer(vocab=vocab).save_pretrained(str(folder))
