"""Text-encoder tokenizers, read from the weight files themselves (never the network).

Both kinds are callables ``text -> list[int]`` that add the model's special tokens (Gemma: BOS
first, no EOS; Jina: ``<s> ... </s>``) and never truncate: truncation is the encoder's job so it
can report how many tokens were cut.

- ``SentencePieceTokenizer``: a serialized SentencePiece model (ComfyUI single files keep one as
  the uint8 tensor ``spiece_model``); ids are the model's own ids, as ComfyUI uses them.
- ``HFTokenizer``: a HF folder's tokenizer files (``tokenizer.json`` / ``tokenizer.model`` with
  ``tokenizer_config.json``) through ``transformers.AutoTokenizer``, offline only, as the
  official code loads them.

``tokenizer_for`` finds one next to the weights: a folder's tokenizer files
(``tokenizer.json`` / ``tokenizer.model`` / ``sentencepiece.bpe.model``; for a diffusers-style
``text_encoder*/`` folder also the sibling ``tokenizer*/``), a single file's ``spiece_model``
tensor, or tokenizer files stored base64-encoded in the safetensors metadata
(``tokenizer_files``, as the official ComfyUI-Newbie-Nodes converter writes them).
``check_special`` refuses a tokenizer whose special ids or vocabulary do not fit the model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files.errors import WeightsError
from ..files.tensors import read_metadata


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


class GGUFTokenizer:
    """The tokenizer a llama.cpp GGUF carries (``tokenizer.ggml.*``), rebuilt by transformers' GGUF
    conversion (offline). Encodes without the file's own special-token rule and adds BOS / EOS as
    ``add_bos`` / ``add_eos`` say, so the encoder's rule holds whatever the file's flags are."""

    def __init__(self, path: Path | str, add_bos: bool, add_eos: bool):
        from transformers import AutoTokenizer

        path = Path(path)
        self._tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True, trust_remote_code=False)
        self.add_bos, self.add_eos = add_bos, add_eos
        self.bos_id = self._tokenizer.bos_token_id
        self.eos_id = self._tokenizer.eos_token_id
        self.pad_id = self._tokenizer.pad_token_id
        # The file's vocabulary (transformers' Gemma class adds a '<mask>' of its own where a
        # vocabulary has none, past the model's rows; the real Gemma 3 vocabulary has one).
        self.vocab_size = self._tokenizer.vocab_size

    def __call__(self, text: str) -> list[int]:
        ids = list(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model")


def _tokenizer_folder(path: Path) -> Path | None:
    candidates = [path] if path.is_dir() else [path.parent]
    if path.is_dir() and path.name.startswith("text_encoder"):   # diffusers-style repo
        candidates.append(path.parent / path.name.replace("text_encoder", "tokenizer", 1))
    return next((c for c in candidates if any((c / f).is_file() for f in TOKENIZER_FILES)), None)


def tokenizer_for(path: Path, refs: dict, add_bos: bool, add_eos: bool):
    """The tokenizer stored with the weights at ``path`` (``refs``: its tensors); ``add_bos`` /
    ``add_eos`` apply to SentencePiece models (HF tokenizers carry their own rule)."""
    if "spiece_model" in refs and not path.is_dir():
        proto = refs["spiece_model"].load().contiguous().numpy().tobytes()
        try:
            return SentencePieceTokenizer(proto, add_bos=add_bos, add_eos=add_eos)
        except Exception as error:  # noqa: BLE001 - sentencepiece raises plain RuntimeError
            raise WeightsError(path, f"its spiece_model tensor is not a SentencePiece model ({error})") from error
    embedded = read_metadata(path).get("tokenizer_files") if not path.is_dir() else None
    if embedded:
        return _metadata_tokenizer(path, embedded)
    folder = _tokenizer_folder(path)
    if folder is None:
        raise WeightsError(path, "no tokenizer found: the file has no spiece_model tensor and no "
                                 "tokenizer files (tokenizer.json / tokenizer.model) sit next to it. "
                                 "Use the ComfyUI single file or the complete HF folder.")
    try:
        return HFTokenizer(folder)
    except Exception as error:  # noqa: BLE001 - transformers raises many types here
        raise WeightsError(folder, f"its tokenizer files cannot be read ({error})") from error


def _metadata_tokenizer(path: Path, embedded: str):
    """A tokenizer saved into the metadata as ``{file name: base64 bytes}`` (the official
    ComfyUI-Newbie-Nodes ``convert_text_encoders.py`` format)."""
    import base64
    import tempfile

    try:
        files = {Path(name).name: base64.b64decode(data) for name, data in json.loads(embedded).items()}
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            return HFTokenizer(folder)   # reads every file now
    except Exception as error:  # noqa: BLE001 - bad JSON/base64 or unreadable tokenizer files
        raise WeightsError(path, f"the tokenizer stored in its metadata cannot be read ({error})") from error


def check_special(path: Path, tokenizer, bos: int, vocab: int, eos: int | None = None) -> None:
    problems = []
    if tokenizer.bos_id != bos:
        problems.append(f"its BOS id is {tokenizer.bos_id}, the model's is {bos}")
    if eos is not None and tokenizer.eos_id != eos:
        problems.append(f"its EOS id is {tokenizer.eos_id}, the model's is {eos}")
    if tokenizer.vocab_size > vocab:
        problems.append(f"it has {tokenizer.vocab_size} tokens, the model only {vocab}")
    if problems:
        raise WeightsError(path, "the tokenizer does not belong to this model: " + "; ".join(problems))
