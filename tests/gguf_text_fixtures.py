"""Gemma 3 text models written as llama.cpp GGUF files, as llama.cpp's converter writes them.

The layout is spelled out here from ``convert_hf_to_gguf.py`` (``Gemma3Model``, github.com/
ggml-org/llama.cpp) and written with the ``gguf`` package's own writer and quantisers, not the
pack's: llama.cpp tensor names, 1 added to every ``*norm.weight``, norms F32, the vocabulary as
SentencePiece pieces / scores / token types, ``gemma3.*`` hyperparameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# transformers Gemma3TextModel name -> llama.cpp name (per layer: {i}).
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def llama_cpp_name(key: str) -> str:
    if key == "embed_tokens.weight":
        return "token_embd.weight"
    if key == "norm.weight":
        return "output_norm.weight"
    _, index, rest = key.split(".", 2)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{index}.{LAYER_NAMES[module]}.{suffix}"


def _token_type(processor, i: int, user_defined: set[int]) -> int:
    # llama.cpp's SentencePieceTokenTypes: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
    if i in user_defined:
        return 4
    if processor.is_unknown(i):
        return 2
    if processor.is_control(i):
        return 3
    if processor.is_unused(i):
        return 5
    if processor.is_byte(i):
        return 6
    return 1


def _user_defined(spm_proto: bytes) -> list[int]:
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(spm_proto)
    kind = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    return [i for i, piece in enumerate(model.pieces) if piece.type == kind]


def write_gemma_gguf(path: Path, state: dict, config, spm_proto: bytes | None, matrix_type: str = "F32",
                     layer_pattern: bool = True, architecture: str = "gemma3") -> Path:
    """``state`` (Gemma3TextModel keys) as a llama.cpp GGUF: matrices in ``matrix_type`` (F32, F16
    or Q8_0, the latter through ``gguf.quants.quantize``), norms +1 in F32. ``layer_pattern``: write
    ``gemma3.attention.sliding_window_pattern`` (per-layer, true = sliding)."""
    import gguf
    import sentencepiece

    writer = gguf.GGUFWriter(str(path), architecture)
    arch = architecture
    writer.add_uint32(f"{arch}.context_length", config.max_position_embeddings)
    writer.add_uint32(f"{arch}.embedding_length", config.hidden_size)
    writer.add_uint32(f"{arch}.block_count", config.num_hidden_layers)
    writer.add_uint32(f"{arch}.feed_forward_length", config.intermediate_size)
    writer.add_uint32(f"{arch}.attention.head_count", config.num_attention_heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", config.num_key_value_heads)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    writer.add_uint32(f"{arch}.attention.key_length", config.head_dim)
    writer.add_uint32(f"{arch}.attention.value_length", config.head_dim)
    full = config.rope_parameters["full_attention"]
    writer.add_float32(f"{arch}.rope.freq_base", full["rope_theta"])
    writer.add_uint32(f"{arch}.attention.sliding_window", config.sliding_window)
    if full.get("rope_type") == "linear":
        writer.add_string(f"{arch}.rope.scaling.type", "linear")
        writer.add_float32(f"{arch}.rope.scaling.factor", full["factor"])
    if layer_pattern:
        writer.add_array(f"{arch}.attention.sliding_window_pattern",
                         [t == "sliding_attention" for t in config.layer_types])
    if spm_proto is not None:
        processor = sentencepiece.SentencePieceProcessor()
        processor.LoadFromSerializedProto(spm_proto)
        n = processor.get_piece_size()
        # A vocabulary's user-defined pieces are the added tokens a HF folder lists in its
        # tokenizer_config.json; the converter writes those USER_DEFINED, '\u2581' as a space.
        user_defined = set(_user_defined(spm_proto))
        pieces = [processor.id_to_piece(i) for i in range(n)]
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([(p.replace("\u2581", " ") if i in user_defined else p).encode()
                               for i, p in enumerate(pieces)])
        writer.add_token_scores([processor.get_score(i) for i in range(n)])
        writer.add_token_types([_token_type(processor, i, user_defined) for i in range(n)])
        writer.add_bos_token_id(config.bos_token_id)
        writer.add_eos_token_id(config.eos_token_id)
        writer.add_pad_token_id(config.pad_token_id)
        writer.add_unk_token_id(processor.unk_id())
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
    for key, tensor in state.items():
        data = tensor.detach().to(torch.float32).numpy()
        if key.endswith("norm.weight"):
            writer.add_tensor(llama_cpp_name(key), (data + 1).astype(np.float32))
        elif matrix_type == "F32":
            writer.add_tensor(llama_cpp_name(key), data)
        elif matrix_type == "F16":
            writer.add_tensor(llama_cpp_name(key), data.astype(np.float16))
        else:
            qtype = getattr(gguf.GGMLQuantizationType, matrix_type)
            writer.add_tensor(llama_cpp_name(key), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_dequantized(state: dict, matrix_type: str) -> dict:
    """``state`` with its matrices as the ``gguf`` package's dequantisation of ``matrix_type``
    (what a loader of that file must compute with); norms unchanged."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, matrix_type)
    out = {}
    for key, tensor in state.items():
        if key.endswith("norm.weight"):
            out[key] = tensor
        else:
            blocks = gguf.quants.quantize(tensor.float().numpy(), qtype)
            out[key] = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).copy()).reshape(tensor.shape)
    return out
