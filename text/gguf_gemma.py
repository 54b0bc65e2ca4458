"""Gemma 3 from a llama.cpp GGUF file (``general.architecture`` ``gemma3``), kept quantised.

What llama.cpp's converter (``convert_hf_to_gguf.py``, ``Gemma3Model``, github.com/ggml-org/
llama.cpp) does to a Gemma 3 text model, undone here:

- tensor names: llama.cpp's (``token_embd``, ``blk.N.attn_q`` ... ``output_norm``); the mapping
  is the ``gguf`` package's own table (``gguf.get_tensor_name_map(MODEL_ARCH.GEMMA3, n)``), read
  backwards;
- every ``*norm.weight`` is stored with 1 added (llama.cpp multiplies by the stored weight, Gemma's
  RMSNorm by 1 + weight): 1 is subtracted, in float32;
- ``token_embd`` keeps only the rows the tokenizer has; the embedding scale sqrt(hidden) is not
  folded in (Gemma's scaled embedding applies it, as llama.cpp's graph does); no q/k permutation
  (Gemma uses NeoX-style RoPE in llama.cpp, the layout transformers uses);
- the vision tower lives in a separate ``mmproj`` file and is never needed.

Hyperparameters come from the ``gemma3.*`` fields. What the file cannot say follows llama.cpp's own
Gemma 3 rules: every 6th layer global (a ``gemma3.attention.sliding_window_pattern`` list of
per-layer booleans, true = sliding, overrides it), local layers RoPE θ 10 000 unscaled, attention
scale 1/sqrt(head_dim). The tokenizer (``tokenizer.ggml.*``, SentencePiece pieces, scores and
types) is rebuilt by transformers' own GGUF tokenizer conversion (``gguf_file=``).

Block-quantised Linear weights of the decoder layers stay packed (``quant.linear.QuantLinear``), a
block-quantised ``token_embd`` too (``quant.embedding.QuantEmbedding``: a lookup dequantises the
rows it reads); norms and F16/F32 tensors are read into the load dtype.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import torch

from ..files.errors import WeightsError
from ..files.gguf import architecture, fields, open_gguf
from ..quant.embedding import QuantEmbedding
from ..quant.linear import make_quant_linear
from . import towers as te

log = logging.getLogger(__name__)

ARCH = "gemma3"
GLOBAL_EVERY = 6            # llama.cpp: hparams.set_swa_pattern(6) for gemma3
LOCAL_ROPE_THETA = 10_000.0  # llama.cpp: rope_freq_base_train_swa for gemma3
NORM_SHIFT = 1.0
NOT_TEXT = ("output.weight",)   # an untied LM head, if a file has one: not read
_LINEAR = re.compile(r"^layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


def config_from_fields(path: Path, values: dict, vocab: int):
    """``Gemma3TextConfig`` from a file's ``gemma3.*`` / ``tokenizer.ggml.*`` fields and its
    embedding rows; the real Gemma-3-4B config where the shapes are the real model's."""
    def need(key):
        if f"{ARCH}.{key}" not in values:
            raise WeightsError(path, f"incomplete GGUF metadata: {ARCH}.{key} is missing; convert the model "
                                     f"again with llama.cpp's convert_hf_to_gguf.py")
        return values[f"{ARCH}.{key}"]

    heads = int(need("attention.head_count"))
    head_dim = int(values.get(f"{ARCH}.attention.key_length") or int(need("embedding_length")) // heads)
    shapes = dict(
        vocab_size=vocab, hidden_size=int(need("embedding_length")),
        intermediate_size=int(need("feed_forward_length")), num_hidden_layers=int(need("block_count")),
        num_attention_heads=heads, num_key_value_heads=int(values.get(f"{ARCH}.attention.head_count_kv", heads)),
        head_dim=head_dim,
    )
    if shapes == te.GEMMA_3_4B_SHAPES:
        return te.gemma_config(shapes)
    global_theta = float(values.get(f"{ARCH}.rope.freq_base", 1_000_000.0))
    full = {"rope_type": "default", "rope_theta": global_theta}
    if values.get(f"{ARCH}.rope.scaling.type") == "linear":
        full = {"rope_type": "linear", "factor": float(need("rope.scaling.factor")), "rope_theta": global_theta}
    pattern = values.get(f"{ARCH}.attention.sliding_window_pattern")
    if pattern is not None:
        if len(pattern) != shapes["num_hidden_layers"]:
            raise WeightsError(path, f"{ARCH}.attention.sliding_window_pattern has {len(pattern)} entries for "
                                     f"{shapes['num_hidden_layers']} layers")
        layer_types = ["sliding_attention" if sliding else "full_attention" for sliding in pattern]
    else:
        layer_types = te.gemma_layer_types(shapes["num_hidden_layers"], GLOBAL_EVERY)
    behaviour = dict(
        layer_types=layer_types,
        rope_parameters={"full_attention": full,
                         "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_ROPE_THETA}},
        query_pre_attn_scalar=head_dim,
        rms_norm_eps=float(values.get(f"{ARCH}.attention.layer_norm_rms_epsilon", 1e-6)),
        max_position_embeddings=int(values.get(f"{ARCH}.context_length", 131072)),
    )
    if f"{ARCH}.attention.sliding_window" in values:
        behaviour["sliding_window"] = int(values[f"{ARCH}.attention.sliding_window"])
    for name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in values:
            behaviour[name] = int(values[f"tokenizer.ggml.{key}"])
    return te.gemma_config(shapes, behaviour)


def hf_to_gguf_names(model: torch.nn.Module, n_layers: int) -> dict[str, str]:
    """{Gemma3TextModel key: llama.cpp tensor name} from the gguf package's Gemma 3 table."""
    import gguf

    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, n_layers)
    names = {}
    for key in model.state_dict():
        stem, _, suffix = key.rpartition(".")
        mapped = table.get_name(stem)
        if mapped is not None:
            names[key] = f"{mapped}.{suffix}"
    return names


def load_gemma_gguf(path: Path, dtype: torch.dtype) -> te.Encoder:
    """Gemma 3 text model + tokenizer from a llama.cpp GGUF (rules in the module docstring)."""
    arch = architecture(path)
    if arch != ARCH:
        what = "no architecture" if arch is None else f"architecture {arch!r}"
        hint = (" (a Next-DiT diffusion model: give it to NextDiT Loader)" if arch == "lumina2" else "")
        raise WeightsError(path, f"a GGUF with {what}{hint}, not a Gemma 3 text model (llama.cpp files of "
                                 f"Gemma 3 name 'gemma3'). Give a gemma-3-4b-it GGUF here.")
    refs = open_gguf(path)
    if "token_embd.weight" not in refs:
        raise WeightsError(path, "incomplete Gemma 3 GGUF: token_embd.weight is missing")
    values = fields(path, (f"{ARCH}.", "tokenizer.ggml."))
    config = config_from_fields(path, values, vocab=refs["token_embd.weight"].shape[0])
    model = te.build_gemma(config)
    names = hf_to_gguf_names(model, config.num_hidden_layers)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unexpected = sorted(set(refs) - set(names.values()) - set(NOT_TEXT))
    missing = sorted(k for k in expected if names.get(k) not in refs)
    misshapen = [f"{names[k]} is {list(refs[names[k]].shape)}, expected {list(expected[k])}"
                 for k in expected if k not in missing and tuple(refs[names[k]].shape) != expected[k]]
    if missing or unexpected or misshapen:
        lines = ([f"missing {', '.join(names.get(k, k) for k in missing[:6])}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:6])}"] if unexpected else []) + misshapen[:6]
        raise WeightsError(path, "does not match a Gemma 3 text model: " + "; ".join(lines) +
                                 ". The file is incomplete or holds a different model.")
    state = {}
    kept = Counter()
    for key, name in names.items():
        ref = refs[name]
        if ref.packed is not None and _LINEAR.match(key):
            make_quant_linear(model.get_submodule(key.removesuffix(".weight")), ref.packed.qtype, ref.packed.raw_shape)
            state[key] = ref.packed.read(None)
            kept[ref.packed.qtype] += 1
        elif ref.packed is not None and key == "embed_tokens.weight":
            old = model.embed_tokens
            model.embed_tokens = QuantEmbedding(ref.packed.qtype, *expected[key], ref.packed.raw_shape, dtype,
                                                scale=float(old.scalar_embed_scale))
            state[key] = ref.packed.read(None)
            kept[ref.packed.qtype] += 1
        elif key.endswith("norm.weight"):
            state[key] = (ref.load(torch.float32) - NORM_SHIFT).to(dtype)
        else:
            state[key] = ref.load(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    if kept:
        log.info("%s: %s Gemma weights kept quantised (%s)", path.name, sum(kept.values()),
                 ", ".join(f"{n} {q}" for q, n in sorted(kept.items())))
    return te.Encoder(model, gguf_tokenizer(path, values, config), str(path))


def gguf_tokenizer(path: Path, values: dict, config):
    """The tokenizer the file carries, or a WeightsError naming what to add."""
    from .tokenizers import GGUFTokenizer, check_special

    if values.get("tokenizer.ggml.model") is None:
        raise WeightsError(path, "this GGUF carries no tokenizer (no tokenizer.ggml.* fields); convert the "
                                 "model again with llama.cpp's convert_hf_to_gguf.py from a folder that has "
                                 "gemma-3-4b-it's tokenizer.model")
    tokenizer = GGUFTokenizer(path, add_bos=True, add_eos=False)
    check_special(path, tokenizer, bos=config.bos_token_id, vocab=config.vocab_size)
    return tokenizer
