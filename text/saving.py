"""Writing a text encoder as a ComfyUI-style single file that ``load_gemma`` / ``load_jina`` (and
ComfyUI's own loaders, for the key names) read back: for small models such as the embedded one.

Layout: ``model.<key>`` tensors (Gemma: ``Gemma3TextModel`` names; Jina: jina's XLM-RoBERTa
names, ``Wqkv`` fused), the tokenizer as the ``spiece_model`` uint8 tensor (SentencePiece) or as
base64 ``tokenizer_files`` metadata (HF tokenizers), and what shapes cannot tell as the JSON
``config`` metadata entry (transformers names) that ``text/loading.py`` reads.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import torch

from ..files.atomic import atomic_path
from ..prompting.system_prompts import RECORDED_KEY
from . import jina_keys
from .towers import Encoder

GEMMA_SAVED_CONFIG = ("layer_types", "sliding_window", "rope_parameters", "query_pre_attn_scalar",
                      "rms_norm_eps", "hidden_activation", "max_position_embeddings",
                      "pad_token_id", "bos_token_id", "eos_token_id")
JINA_SAVED_CONFIG = ("num_attention_heads", "layer_norm_eps", "hidden_act", "max_position_embeddings",
                     "pad_token_id", "bos_token_id", "eos_token_id")


def save_gemma(path, encoder: Encoder, dtype: torch.dtype | None = None, system_prompt: str | None = None) -> None:
    """Gemma text model + tokenizer -> one safetensors file (``model.*`` keys). ``system_prompt``:
    the one it was trained with, recorded for NextDiT Text Encode's ``auto`` (a preset name or the text)."""
    config = encoder.model.config
    values = {name: getattr(config, name) for name in GEMMA_SAVED_CONFIG}
    extra = {} if system_prompt is None else {RECORDED_KEY: system_prompt}
    _save(path, {"model." + k: v for k, v in encoder.model.state_dict().items()}, encoder, values, dtype, extra)


def save_jina(path, encoder: Encoder, dtype: torch.dtype | None = None) -> None:
    """Jina text tower + tokenizer -> one safetensors file (ComfyUI ``model.<flash name>`` keys)."""
    config = encoder.model.config
    values = {name: getattr(config, name) for name in JINA_SAVED_CONFIG}
    values["rope_theta"] = config.rope_parameters["rope_theta"]
    flash = jina_keys.transformers_to_flash(encoder.model.state_dict())
    _save(path, {"model." + k: v for k, v in flash.items()}, encoder, values, dtype)


def _save(path, tensors: dict, encoder: Encoder, config: dict, dtype: torch.dtype | None,
          extra: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype if dtype and v.is_floating_point() else v.dtype).contiguous()
               for k, v in tensors.items()}
    metadata = {"config": json.dumps(config), **(extra or {})}
    proto = getattr(encoder.tokenizer, "model_proto", None)
    if proto is not None:
        tensors["spiece_model"] = torch.frombuffer(bytearray(proto), dtype=torch.uint8)
    elif hasattr(encoder.tokenizer, "save_pretrained"):
        with tempfile.TemporaryDirectory() as folder:
            encoder.tokenizer.save_pretrained(folder)
            metadata["tokenizer_files"] = json.dumps(
                {p.name: base64.b64encode(p.read_bytes()).decode("ascii") for p in Path(folder).iterdir()})
    else:
        raise ValueError(f"cannot store a {type(encoder.tokenizer).__name__} tokenizer")
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)
