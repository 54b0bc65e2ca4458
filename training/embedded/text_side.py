"""The embedded model's text encoders: tiny Gemma 3 and Jina (XLM-R) configs with tokenizers
trained on the shapes captions.

Jina stays frozen and random (its mean-pooled vector only has to tell captions apart). Gemma starts
random and then trains with the Next-DiT (``training/dit.py``; the official recipe froze both).
Its starting point matters: Gemma's default init (embeddings std 0.02, scaled by √hidden) lets each
block's post-normed output swamp the embeddings, so a word's features barely depend on the word;
embeddings of std 0.3 keep each word's identity (README).

They are saved as ComfyUI-layout single files (tokenizer as the ``spiece_model`` tensor, sizes in
the metadata), so inference loads them exactly as it loads the real encoders.
"""

from __future__ import annotations

import io
import random

import torch

from ...prompting import SYSTEM_PROMPTS
from ...text import towers as te
from ...text.saving import save_gemma, save_jina
from ...text.tokenizers import SentencePieceTokenizer
from .shapes import caption_pieces, plain_caption, training_scene, xml_caption

GEMMA_SHAPES = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)
GEMMA_BEHAVIOUR = {"sliding_window_pattern": 3, "query_pre_attn_scalar": 16}
GEMMA_EMBEDDING_STD = 0.3
JINA_SHAPES = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, type_vocab_size=1)


def _corpus(count: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        scene = training_scene(rng)
        texts += [xml_caption(scene), plain_caption(scene)]
    return texts + list(SYSTEM_PROMPTS.values())


def train_tokenizers(seed: int = 0) -> tuple[bytes, bytes]:
    """(Gemma-style BPE: pad 0 / eos 1 / bos 2 with byte fallback, XLM-R-style unigram: <s> 0 /
    <pad> 1 / </s> 2 / <unk> 3) SentencePiece models, serialized."""
    import sentencepiece as spm

    corpus = _corpus(seed=seed)
    gemma, jina = io.BytesIO(), io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=gemma, vocab_size=GEMMA_SHAPES["vocab_size"],
        model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, bos_piece="<bos>", eos_piece="<eos>",
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        user_defined_symbols=caption_pieces(), minloglevel=2)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=jina, vocab_size=JINA_SHAPES["vocab_size"],
        model_type="unigram", bos_id=0, pad_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False,
        user_defined_symbols=caption_pieces(), minloglevel=2)
    return gemma.getvalue(), jina.getvalue()


def build_text_encoders(seed: int = 0) -> tuple[te.Encoder, te.Encoder]:
    """Random tiny Gemma 3 and Jina encoders with their tokenizers (fixed seed)."""
    from transformers import Gemma3TextModel, JinaEmbeddingsV3Model

    gemma_proto, jina_proto = train_tokenizers(seed)
    gemma_tokenizer = SentencePieceTokenizer(gemma_proto, add_bos=True, add_eos=False)
    # The captions' small vocabulary may give fewer pieces than asked: embed exactly those.
    jina_tokenizer = SentencePieceTokenizer(jina_proto, add_bos=True, add_eos=True)
    torch.manual_seed(seed)
    gemma = Gemma3TextModel(te.gemma_config(GEMMA_SHAPES, GEMMA_BEHAVIOUR)).eval().requires_grad_(False)
    torch.nn.init.normal_(gemma.embed_tokens.weight, std=GEMMA_EMBEDDING_STD)
    jina_shapes = {**JINA_SHAPES, "vocab_size": jina_tokenizer.vocab_size}
    jina = JinaEmbeddingsV3Model(te.jina_config(jina_shapes), add_pooling_layer=False)
    jina = jina.eval().requires_grad_(False)
    return te.Encoder(gemma, gemma_tokenizer), te.Encoder(jina, jina_tokenizer)


def save_text_encoders(gemma: te.Encoder, jina: te.Encoder, gemma_path, jina_path) -> None:
    save_gemma_encoder(gemma.model, gemma.tokenizer, gemma_path)
    save_jina(jina_path, jina, dtype=torch.float16)


def save_gemma_encoder(model: torch.nn.Module, tokenizer, path) -> None:
    """Gemma (random, or trained with the Next-DiT) as a ComfyUI-layout fp16 single file, recording
    that the Next-DiT trained on it without a system prompt (NextDiT Text Encode's ``auto`` reads it)."""
    save_gemma(path, te.Encoder(model, tokenizer), dtype=torch.float16, system_prompt="none")
