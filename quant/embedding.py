"""QuantEmbedding: an embedding table kept in a ggml block format in memory.

A GGUF stores a (vocab, dim) table row by row, each row a whole number of blocks, so a lookup
gathers the raw bytes of the rows asked for and dequantises only those (``quant.blocks``). The
table is about a sixth of Gemma 3 4B; kept packed it costs what the file costs instead of a
float copy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import dequantize


class QuantEmbedding(nn.Module):
    """``embedding(ids) * scale`` with the table in format ``qtype`` (``weight``: uint8 rows of
    blocks); the result is in ``compute_dtype``, multiplied by ``scale`` in that dtype (as Gemma's
    scaled embedding multiplies in the weight's dtype)."""

    def __init__(self, qtype: str, num_embeddings: int, embedding_dim: int, raw_shape: tuple[int, ...],
                 compute_dtype: torch.dtype, scale: float = 1.0, device: torch.device | str | None = None):
        super().__init__()
        self.qtype = qtype
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.empty(raw_shape, dtype=torch.uint8, device=device), requires_grad=False)
        self.register_buffer("embed_scale", torch.tensor(scale), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.weight[ids.reshape(-1)]
        values = dequantize(rows, self.qtype, (rows.shape[0], self.embedding_dim), self.compute_dtype)
        values = values * self.embed_scale.to(self.compute_dtype)
        return values.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}"
