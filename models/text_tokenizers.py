"""Tokenizers for the two text encoders, read from the weight files themselves (never the network).

Both kinds are callables ``text -> list[int]`` that add the model's special tokens (Gemma: BOS
first, no EOS; Jina: ``<s> ... </s>``) and never truncate: truncation is the encoder's job so it
can report how many tokens were cut.

- ``SentencePieceTokenizer``: a serialized SentencePiece model (ComfyUI single files keep one as
  the uint8 tensor ``spiece_model``); ids are the model's own ids, as ComfyUI uses them.
- ``HFTokenizer``: a HF folder's tokenizer files (``tokenizer.json`` / ``tokenizer.model`` with
  ``tokenizer_config.json``) through ``transformers.AutoTokenizer``, offline only, as the
  official code loads them.
"""

from __future__ import annotations

from pathlib import Path


class SentencePieceTokenizer:
    """A SentencePiece model from its serialized bytes.

    ``add_bos`` / ``add_eos`` use the model's own BOS/EOS ids (``bos_id``/``eos_id`` below).
    """

    def __init__(self, model_proto: bytes, add_bos: bool, add_eos: bool):
        import sentencepiece

        self._processor = sentencepiece.SentencePieceProcessor()
        self._processor.LoadFromSerializedProto(model_proto)
        self.model_proto = bytes(model_proto)
        self.add_bos, self.add_eos = add_bos, add_eos
        self.bos_id = self._processor.bos_id()
        self.eos_id = self._processor.eos_id()
        self.pad_id = self._processor.pad_id()
        self.vocab_size = self._processor.get_piece_size()

    def __call__(self, text: str) -> list[int]:
        ids = list(self._processor.encode(text))
        return ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])


class HFTokenizer:
    """The tokenizer saved in a HF model folder (offline; remote code is never run)."""

    def __init__(self, folder: Path | str):
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False)
        self.save_pretrained = self._tokenizer.save_pretrained
        self.bos_id = self._tokenizer.bos_token_id
        self.eos_id = self._tokenizer.eos_token_id
        self.pad_id = self._tokenizer.pad_token_id
        self.vocab_size = len(self._tokenizer)

    def __call__(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=True)["input_ids"])
