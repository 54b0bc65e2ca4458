"""A tensor of a weight file, not yet read (``TensorRef``), and what the readers of every format share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class PackedData:
    """A tensor stored in a ggml block format (a GGUF file): its format name (``quant.blocks``),
    a reader of its raw bytes, ``read(device)`` -> uint8 of ``raw_shape`` (rows of blocks as the
    file stores them)."""

    qtype: str
    read: Callable[[torch.device | None], torch.Tensor]
    raw_shape: tuple[int, ...]


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a weight file, not yet read.

    ``reader(dtype, device, own)`` returns it in ``dtype`` (None: the file's) on ``device`` (None:
    CPU); ``own`` asks for fresh memory even where a memory map would do (for a tensor that is only
    an input to a copy, so the map's pages do not stay resident). The only transient copy a read
    makes is of this one tensor.

    ``packed``: set for a block-quantised tensor of a GGUF file, whose raw blocks a loader may keep
    as they are (``load`` dequantises; ``dtype`` is then float32).
    """

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype
    reader: Callable[[torch.dtype | None, torch.device | None, bool], torch.Tensor]
    packed: PackedData | None = None

    def load(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
             own: bool = False) -> torch.Tensor:
        return self.reader(dtype, torch.device(device) if device is not None else None, own)

    @classmethod
    def of(cls, tensor: torch.Tensor, file: Path | str = "<memory>") -> "TensorRef":
        """A ref to a tensor already in memory (tests, pickles)."""
        return cls(Path(file), tuple(tensor.shape), tensor.dtype,
                   lambda dtype, device, own: tensor.to(device=device, dtype=dtype or tensor.dtype))


def prefault(tensor: torch.Tensor) -> None:
    """Page a memory-mapped tensor in now (one byte per 4 KiB page), so the model is really in
    memory when loading returns instead of being read from disk during the first step."""
    if tensor.numel():
        tensor.reshape(-1).view(torch.uint8)[::4096].sum()
