"""Loading the Gemma 3 and Jina CLIP v2 text encoders from the layouts users have.

Gemma 3 (text model only; the vision tower is never read):
- HF ``google/gemma-3-4b-it`` folder: ``language_model.model.*`` (the shards' legacy names) or
  ``model.language_model.*`` (what newer transformers save), next to ``vision_tower.*`` and
  ``multi_modal_projector.*``;
- text-only layouts: ``model.*`` (``Gemma3ForCausalLM``, ComfyUI ``gemma_3_4b_it_bf16.safetensors``)
  or bare ``Gemma3TextModel`` keys; also ``language_model.*`` (``Gemma3Model``, as the official
  ComfyUI-Newbie-Nodes ``convert_text_encoders.py`` saves it).
Jina CLIP v2 (text tower only): the original ``text_model.transformer.roberta.*`` layout with its
``retrieval.query`` LoRA merged in, ComfyUI ``jina_clip_v2_bf16.safetensors`` (``model.*``), bare
or ``roberta.``-prefixed flash keys, and transformers ``JinaEmbeddingsV3Model`` keys.

Tokenizers come from the same place: a folder's tokenizer files, a single file's ``spiece_model``
tensor (a serialized SentencePiece model), or the tokenizer files the official converter stores
base64-encoded in the metadata (``tokenizer_files``). Never from the network.

Config: a model whose shapes are the real one's gets the real config fixed in
``text/towers.py``. A smaller model takes its sizes from tensor shapes (vocab, hidden,
layers, FFN; Gemma heads from ``q_norm`` = head_dim) and anything else from the JSON ``config``
entry of the safetensors ``__metadata__`` (or a folder's ``config.json``, ``text_config`` if
nested), keys named as transformers names them (``GEMMA_3_BEHAVIOUR`` / ``JINA_BEHAVIOUR`` keys,
``layer_types``; Jina also ``num_attention_heads``); what is still unknown follows the real
model: Gemma's ``query_pre_attn_scalar`` = head_dim, Jina's heads = hidden / 64.

Every parameter must come from the file with the right shape: anything missing, unexpected or
misshapen is a ``WeightsError`` naming the modules, never a half-random model.
"""

from __future__ import annotations

import json
import logging
import re
from functools import partial
from pathlib import Path

import torch

from .. import dtypes
from ..files.errors import WeightsError
from ..files.keys import describe_contents, group_keys, mismatch_lines
from ..files.tensors import TensorRef, open_weights, read_metadata
from ..prompting.system_prompts import RECORDED_KEY
from . import jina_keys
from . import towers as te
from .encoders import TextEncoders
from .tokenizers import check_special, tokenizer_for

log = logging.getLogger(__name__)

GEMMA_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.", "")
GEMMA_NOT_TEXT = ("vision_tower.", "vision_model.", "multi_modal_projector.", "lm_head.", "spiece_model")
JINA_PREFIXES = ("text_model.transformer.roberta.", "text_model.transformer.", "roberta.", "model.", "")
JINA_NOT_TOWER = ("pooler.", "lm_head.", "spiece_model")
JINA_BUFFERS = ("position_ids", "inv_freq", "lora_dropout_mask")
_LAYER = re.compile(r"^(?:encoder\.)?layers\.(\d+)\.")


# ---- public entry points ----------------------------------------------------------------------

def resolve_dtypes(name: str, device: torch.device | str) -> tuple[torch.dtype, torch.dtype]:
    """(Gemma dtype, Jina dtype) for a ``dtypes.DTYPES`` name. ``auto`` follows the pack's rule:
    Jina is fp16-safe, Gemma 3 is not (its activations overflow fp16)."""
    return dtypes.resolve(name, device, fp16_safe=False), dtypes.resolve(name, device, fp16_safe=True)


def load_text_encoders(gemma_path, jina_path, device: torch.device | str = "cpu",
                       dtype: str = "auto", make_room=None) -> TextEncoders:
    """NEXTDIT_TEXT for two weight paths; ``device`` is where encoding runs (the weights stay on
    the CPU between encodes; ``make_room(bytes, device)`` is called before they move there).
    Loads now, so a bad file fails here."""
    gemma_dtype, jina_dtype = resolve_dtypes(dtype, device)
    load = partial(_load_pair, Path(gemma_path), Path(jina_path), gemma_dtype, jina_dtype)
    return TextEncoders(load, compute_device=device, encoders=load(), make_room=make_room,
                        name=f"{Path(gemma_path).name} + {Path(jina_path).name}",
                        system_prompt=recorded_system_prompt(gemma_path))


def recorded_system_prompt(gemma_path) -> str | None:
    """What the Gemma file's metadata says it was trained with (``prompting.RECORDED_KEY``), or None.
    Folders (HF layouts) and the official files record nothing."""
    return read_metadata(gemma_path).get(RECORDED_KEY)


def _load_pair(gemma_path: Path, jina_path: Path, gemma_dtype, jina_dtype):
    return load_gemma(gemma_path, gemma_dtype), load_jina(jina_path, jina_dtype)


def _refuse_jina_gguf(path: Path) -> None:
    """No GGUF of jina-clip-v2's text tower can be read: mainline llama.cpp converts
    jina-embeddings-v3 (``jina-bert-v3``, the same XLM-RoBERTa architecture with other weights and
    its task LoRAs in separate files) but not jina-clip-v2 (its conversion is an unmerged pull
    request, ggml-org/llama.cpp#16574), so there is no layout in the field to map."""
    if path.suffix.lower() == ".gguf":
        raise WeightsError(path, "a GGUF file cannot be the Jina CLIP v2 text encoder: llama.cpp does not convert "
                                 "jina-clip-v2 (a jina-embeddings-v3 GGUF is a different model). Give "
                                 "jina_clip_v2_bf16.safetensors (or the jinaai/jina-clip-v2 folder) here.")


def load_gemma(path, dtype: torch.dtype = torch.float32) -> te.Encoder:
    """Gemma 3 text model + tokenizer from any supported layout, on the CPU, eval mode."""
    path = Path(path)
    if path.suffix.lower() == ".gguf" and path.is_file():
        from .gguf_gemma import load_gemma_gguf

        return load_gemma_gguf(path, dtype)
    refs = open_weights(path)
    prefix = _find_prefix(refs, GEMMA_PREFIXES, ("embed_tokens.weight",))
    if prefix is None:
        raise WeightsError(path, f"not a Gemma 3 text model (no embed_tokens.weight): it looks like "
                                 f"{describe_contents(_shapes(refs))}. Give the gemma-3-4b-it file here.")
    tower = _tower(path, refs, prefix, GEMMA_NOT_TEXT)
    shapes = _infer_gemma_shapes(path, _shapes(tower))
    try:
        config = gemma_config_for(shapes, _file_config(path))
    except (TypeError, ValueError) as error:
        raise WeightsError(path, f"the Gemma config in the file is not usable ({error})") from error
    model = te.build_gemma(config)
    _check_keys(path, model, _shapes(tower), "Gemma 3 text model")
    model.load_state_dict({k: ref.load(dtype) for k, ref in tower.items()}, strict=True, assign=True)
    tokenizer = tokenizer_for(path, refs, add_bos=True, add_eos=False)
    check_special(path, tokenizer, bos=config.bos_token_id, vocab=config.vocab_size)
    return te.Encoder(model, tokenizer, str(path))


def load_jina(path, dtype: torch.dtype = torch.float32) -> te.Encoder:
    """Jina CLIP v2 text tower (``JinaEmbeddingsV3Model``, no pooler) + tokenizer, on the CPU."""
    path = Path(path)
    _refuse_jina_gguf(path)
    refs = open_weights(path)
    markers = ("embeddings.word_embeddings.weight", "embeddings.word_embeddings" + jina_keys.ORIGINAL)
    prefix = _find_prefix(refs, JINA_PREFIXES, markers)
    if prefix is None:
        raise WeightsError(path, f"not a Jina CLIP v2 text model (no embeddings.word_embeddings): it "
                                 f"looks like {describe_contents(_shapes(refs))}. Give the "
                                 f"jina-clip-v2 file here.")
    tower = {k: v for k, v in _tower(path, refs, prefix, JINA_NOT_TOWER).items()
             if not k.endswith(JINA_BUFFERS)}
    file_config = _file_config(path)
    state = {k: ref.load() for k, ref in tower.items()}
    try:
        if jina_keys.has_lora(state):
            task, alpha = jina_keys.lora_settings(file_config)
            state = jina_keys.merge_lora(state, task=task, alpha=alpha)
        if jina_keys.is_flash_layout(state):
            state = jina_keys.flash_to_transformers(state)
    except ValueError as error:
        raise WeightsError(path, str(error)) from error
    shapes = _infer_jina_shapes(path, {k: tuple(v.shape) for k, v in state.items()}, file_config)
    try:
        config = jina_config_for(shapes, file_config)
    except (TypeError, ValueError) as error:
        raise WeightsError(path, f"the Jina config in the file is not usable ({error})") from error
    model = te.build_jina(config)
    _check_keys(path, model, {k: tuple(v.shape) for k, v in state.items()}, "Jina CLIP v2 text model")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    tokenizer = tokenizer_for(path, refs, add_bos=True, add_eos=True)
    check_special(path, tokenizer, bos=config.bos_token_id, vocab=config.vocab_size, eos=config.eos_token_id)
    return te.Encoder(model, tokenizer, str(path))


def gemma_config_for(shapes: dict, file_config: dict):
    """The real Gemma-3-4B config for its shapes (whatever a file says), else shapes + the
    file's behaviour values + the real model's rules for the rest."""
    if shapes == te.GEMMA_3_4B_SHAPES:
        return te.gemma_config(shapes)
    behaviour = _picked(file_config, set(te.GEMMA_3_BEHAVIOUR) | {"layer_types"})
    behaviour.setdefault("query_pre_attn_scalar", shapes["head_dim"])
    return te.gemma_config(shapes, behaviour)


def jina_config_for(shapes: dict, file_config: dict):
    """The real jina-clip-v2 text config for its shapes, else shapes + the file's values."""
    if shapes == te.JINA_CLIP_V2_SHAPES:
        return te.jina_config(shapes)
    values = dict(file_config)
    if "rotary_emb_base" in values:   # jina's own name for the RoPE base
        values.setdefault("rope_theta", values["rotary_emb_base"])
    return te.jina_config(shapes, _picked(values, set(te.JINA_BEHAVIOUR)))


# ---- layouts ----------------------------------------------------------------------------------

def _shapes(refs: dict) -> dict[str, tuple[int, ...]]:
    return {key: tuple(ref.shape) for key, ref in refs.items()}


def _find_prefix(refs: dict, prefixes: tuple[str, ...], markers: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if any(prefix + marker in refs for marker in markers):
            return prefix
    return None


def _tower(path: Path, refs: dict[str, TensorRef], prefix: str, not_tower: tuple[str, ...]) -> dict:
    """The model's own tensors with ``prefix`` stripped; the other parts of the file (vision
    tower, projections, LM head, tokenizer) are left unread."""
    tower = {k[len(prefix):]: ref for k, ref in refs.items()
             if k.startswith(prefix) and not k[len(prefix):].startswith(not_tower)}
    skipped = [k for k in refs if not (k.startswith(prefix) and k[len(prefix):] in tower)]
    if skipped:
        log.debug("%s: not read (not part of the text model): %s", path.name, ", ".join(group_keys(skipped)))
    return tower


def _layer_count(keys) -> int:
    indices = [int(m.group(1)) for m in map(_LAYER.match, keys) if m]
    return max(indices) + 1 if indices else 0


def _need(path: Path, shapes: dict, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise WeightsError(path, f"incomplete {what}: {key} is missing. The file is damaged or "
                                 f"holds another model; download it again.")
    return shapes[key]


def _infer_gemma_shapes(path: Path, shapes: dict) -> dict:
    what = "Gemma 3 text model"
    vocab, hidden = _need(path, shapes, "embed_tokens.weight", what)
    head_dim = _need(path, shapes, "layers.0.self_attn.q_norm.weight", what)[0]
    return dict(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=_need(path, shapes, "layers.0.mlp.gate_proj.weight", what)[0],
        num_hidden_layers=_layer_count(shapes),
        num_attention_heads=_need(path, shapes, "layers.0.self_attn.q_proj.weight", what)[0] // head_dim,
        num_key_value_heads=_need(path, shapes, "layers.0.self_attn.k_proj.weight", what)[0] // head_dim,
        head_dim=head_dim,
    )


def _infer_jina_shapes(path: Path, shapes: dict, file_config: dict) -> dict:
    what = "Jina CLIP v2 text model"
    vocab, hidden = _need(path, shapes, "embeddings.word_embeddings.weight", what)
    sizes = dict(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=_layer_count(shapes),
        intermediate_size=_need(path, shapes, "layers.0.mlp.fc1.weight", what)[0],
        type_vocab_size=_need(path, shapes, "embeddings.token_type_embeddings.weight", what)[0],
    )
    real = dict(te.JINA_CLIP_V2_SHAPES)
    heads = real.pop("num_attention_heads")
    if sizes != real:   # heads cannot be seen in the tensors: the file says, or head_dim 64
        heads = file_config.get("num_attention_heads")
        if heads is None and hidden % te.JINA_HEAD_DIM:
            raise WeightsError(path, f"cannot tell the attention heads of a {hidden}-wide Jina model; "
                                     f"store them as num_attention_heads in the file's metadata "
                                     f"'config' JSON")
        heads = heads or hidden // te.JINA_HEAD_DIM
    return {**sizes, "num_attention_heads": int(heads)}


def _file_config(path: Path) -> dict:
    """The model config a file carries: safetensors metadata ``config`` or a folder's config.json."""
    text = None
    if path.is_dir():
        if (path / "config.json").is_file():
            text = (path / "config.json").read_text()
    else:
        text = read_metadata(path).get("config")
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError as error:
        raise WeightsError(path, f"its config is not valid JSON ({error})") from error
    if not isinstance(config, dict):
        return {}
    nested = config.get("text_config")
    return {**config, **nested} if isinstance(nested, dict) else config


def _picked(config: dict, names: set[str]) -> dict:
    return {k: v for k, v in config.items() if k in names}


def _check_keys(path: Path, model: torch.nn.Module, shapes: dict, what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    lines = mismatch_lines(expected, shapes)
    if not lines:
        return
    raise WeightsError(path, f"does not match a {what}: " + "; ".join(lines) +
                             ". The file is incomplete or holds a different model.")
