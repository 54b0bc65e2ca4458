"""The ggml block formats and their dequantisation in plain torch.

A quantised tensor of shape (rows, cols) is stored row by row; each row is cols / block_size
blocks of type_size bytes. Every format keeps per-block float16 scales and small integers; the
layouts below are those of ggml (``ggml-common.h`` / ``ggml-quants.c`` in github.com/ggml-org/
ggml), element order included. ``dequantize`` works on any device and under ``torch.compile``
(bit operations, views and products only) and computes in float32 in the same order of
operations as the ``gguf`` package's numpy reference, so the two agree bit for bit.

Super-block ("K") formats hold 256 elements in 8 or 16 sub-blocks, each with its own scale
(and minimum), the scales themselves quantised against one or two float16 numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

QK_K = 256


@dataclass(frozen=True)
class BlockFormat:
    name: str          # ggml type name (GGMLQuantizationType member name)
    ggml_id: int       # its number in GGUF tensor infos
    block_size: int    # elements per block
    type_size: int     # bytes per block

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size

    def row_bytes(self, cols: int) -> int:
        return cols // self.block_size * self.type_size


# Every format this pack reads (ggml's type numbers; bytes per block from the structs).
FORMATS = {f.name: f for f in (
    BlockFormat("F32", 0, 1, 4),
    BlockFormat("F16", 1, 1, 2),
    BlockFormat("Q4_0", 2, 32, 2 + 16),
    BlockFormat("Q4_1", 3, 32, 2 + 2 + 16),
    BlockFormat("Q5_0", 6, 32, 2 + 4 + 16),
    BlockFormat("Q5_1", 7, 32, 2 + 2 + 4 + 16),
    BlockFormat("Q8_0", 8, 32, 2 + 32),
    BlockFormat("Q2_K", 10, QK_K, 16 + 64 + 2 + 2),
    BlockFormat("Q3_K", 11, QK_K, 32 + 64 + 12 + 2),
    BlockFormat("Q4_K", 12, QK_K, 2 + 2 + 12 + 128),
    BlockFormat("Q5_K", 13, QK_K, 2 + 2 + 12 + 32 + 128),
    BlockFormat("Q6_K", 14, QK_K, 128 + 64 + 16 + 2),
    BlockFormat("BF16", 30, 1, 2),
)}
BY_ID = {f.ggml_id: f for f in FORMATS.values()}
# Formats kept packed in memory by the quantised Linear (F32/F16 are plain tensors).
PACKED = tuple(name for name in FORMATS if name not in ("F32", "F16"))


def dequantize(packed: Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """The float tensor of ``shape`` held by ``packed`` (uint8, any shape with the right number
    of bytes) in format ``qtype``; computed in float32 on ``packed``'s device, returned in ``dtype``."""
    fmt = FORMATS[qtype]
    blocks = packed.reshape(-1, fmt.type_size)
    values = _DEQUANTIZE[qtype](blocks)
    return values.reshape(shape).to(dtype)


# ---- helpers -----------------------------------------------------------------------------------

def _f16(blocks: Tensor, start: int) -> Tensor:
    """The float16 at byte ``start`` of each block, as float32 (n, 1)."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _shifted(byte_columns: Tensor, shifts: tuple[int, ...]) -> Tensor:
    """(n, k) bytes -> (n, len(shifts), k): each byte shifted right by each amount (uint8: the
    bit work touches one byte per element; values become float only once, at the end)."""
    by = torch.tensor(shifts, dtype=torch.uint8, device=byte_columns.device).view(1, -1, 1)
    return byte_columns.unsqueeze(1) >> by


def _nibbles(qs: Tensor) -> Tensor:
    """(n, 16) bytes -> (n, 32): low nibbles are elements 0-15, high nibbles 16-31."""
    return (_shifted(qs, (0, 4)) & 0xF).flatten(1)


def _bits32(qh: Tensor) -> Tensor:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) its bits, bit j at column j."""
    return (_shifted(qh, tuple(range(8))) & 1).transpose(1, 2).flatten(1)


# ---- legacy formats: blocks of 32 --------------------------------------------------------------

def _q8_0(b: Tensor) -> Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b, 0)


def _q4_0(b: Tensor) -> Tensor:
    return _f16(b, 0) * (_nibbles(b[:, 2:]).float() - 8)


def _q4_1(b: Tensor) -> Tensor:
    return _f16(b, 0) * _nibbles(b[:, 4:]).float() + _f16(b, 2)


def _q5_0(b: Tensor) -> Tensor:
    q = _nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.float() - 16)


def _q5_1(b: Tensor) -> Tensor:
    q = _nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


# ---- K formats: super-blocks of 256 ------------------------------------------------------------
# Element e of a super-block is written as a product index below, e.g. (half h, shift s, l) for
# e = 128h + 32s + l; a scale belongs to every 16 (or 32) consecutive elements.

def _q2_k(b: Tensor) -> Tensor:
    n = b.shape[0]
    scales = b[:, :16]
    q = _shifted(b[:, 16:80].reshape(n * 2, 32), (0, 2, 4, 6)) & 3          # (2n, shift, l)
    dl = (_f16(b, 80) * (scales & 0xF).float()).view(n, 16, 1)
    ml = (_f16(b, 82) * (scales >> 4).float()).view(n, 16, 1)
    return (dl * q.reshape(n, 16, 16).float() - ml).reshape(n, QK_K)


def _q3_k(b: Tensor) -> Tensor:
    n = b.shape[0]
    hmask, qs, packed = b[:, :32], b[:, 32:96], b[:, 96:108]
    # 16 scales of 6 bits: low 4 bits in the nibbles of bytes 0-7 (low nibbles first), high 2
    # bits in bytes 8-11 (two bits per shift 0, 2, 4, 6).
    low = (_shifted(packed[:, :8], (0, 4)) & 0xF).flatten(1)
    high = (_shifted(packed[:, 8:], (0, 2, 4, 6)) & 3).flatten(1)
    scales = (low | (high << 4)).float() - 32
    dl = (_f16(b, 108) * scales).view(n, 16, 1)
    q = (_shifted(qs.reshape(n * 2, 32), (0, 2, 4, 6)) & 3).reshape(n, 8, 32)       # (h*4+s, l)
    # The high bit of element (h, s, l) is bit 4h+s of hmask[l]; a clear bit subtracts 4.
    hbit = (_shifted(hmask, tuple(range(8))) & 1)                                      # (n, 8, 32)
    q = q.float() - ((hbit ^ 1) << 2).float()
    return (dl * q.reshape(n, 16, 16)).reshape(n, QK_K)


def _k_scales(packed: Tensor) -> tuple[Tensor, Tensor]:
    """The 8 six-bit (scale, min) pairs of a Q4_K/Q5_K block from its 12 scale bytes."""
    p = packed.to(torch.int32)
    sc = torch.cat([p[:, 0:4] & 63, (p[:, 8:12] & 0xF) | ((p[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([p[:, 4:8] & 63, (p[:, 8:12] >> 4) | ((p[:, 4:8] >> 6) << 4)], dim=1)
    return sc, mn


def _q4_k(b: Tensor) -> Tensor:
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    d = (_f16(b, 0) * sc.float()).view(n, 8, 1)
    dm = (_f16(b, 2) * mn.float()).view(n, 8, 1)
    # Element (chunk c, nibble k, l) = 64c + 32k + l sits in byte 32c + l; sub-block 2c + k.
    q = (_shifted(b[:, 16:].reshape(n * 4, 32), (0, 4)) & 0xF).reshape(n, 8, 32)
    return (d * q.float()).sub_(dm).reshape(n, QK_K)


def _q5_k(b: Tensor) -> Tensor:
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    d = (_f16(b, 0) * sc.float()).view(n, 8, 1)
    dm = (_f16(b, 2) * mn.float()).view(n, 8, 1)
    low = (_shifted(b[:, 48:].reshape(n * 4, 32), (0, 4)) & 0xF).reshape(n, 8, 32)
    high = _shifted(b[:, 16:48], tuple(range(8))) & 1          # bit j of qh[l] -> sub-block j
    return (d * (low | (high << 4)).float()).sub_(dm).reshape(n, QK_K)


def _q6_k(b: Tensor) -> Tensor:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    # Element (half h, r, l) = 128h + 32r + l: low 4 bits from nibble r // 2 of ql[64h + 32(r % 2) + l],
    # high 2 bits from bits 2r, 2r+1 of qh[32h + l].
    low = (_shifted(ql.reshape(n * 2, 64), (0, 4)) & 0xF).reshape(n, 2, 4, 32)
    high = (_shifted(qh.reshape(n * 2, 32), (0, 2, 4, 6)) & 3).reshape(n, 2, 4, 32)
    q = (low | (high << 4)).reshape(n, 16, 16).float() - 32
    d = (_f16(b, 208) * scales).view(n, 16, 1)
    return (d * q).reshape(n, QK_K)


def _bf16(b: Tensor) -> Tensor:
    return b.contiguous().view(torch.bfloat16).float()


def _f16_plain(b: Tensor) -> Tensor:
    return b.contiguous().view(torch.float16).float()


def _f32(b: Tensor) -> Tensor:
    return b.contiguous().view(torch.float32)


_DEQUANTIZE = {
    "F32": _f32, "F16": _f16_plain, "BF16": _bf16,
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}
