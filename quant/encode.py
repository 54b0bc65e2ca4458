"""Encoding float rows into ggml block formats (numpy; used when writing GGUF files only).

F32, F16, BF16 and the 32-element formats Q8_0, Q5_0, Q5_1 and Q4_1 are encoded by the ``gguf``
package (``gguf.quants.quantize``, which matches llama.cpp's reference quantisers). Q4_0 is encoded
here with a scale search (below), since the reference's scale (the largest magnitude to level -8)
leaves 8.6 % error on Gaussian weights where the searched one leaves 8.1 %; the file format is the
same. That package only decodes the K formats, so Q6_K, Q5_K and Q4_K are encoded here too, in the
layouts of ``quant.blocks``.

Q4_0's scale, and each Q6_K sub-block's, come from llama.cpp's ``make_qx_quants`` search
(ggml-quants.c, the quantiser llama.cpp uses for Q4_0 when given importance weights, and for Q6_K)
with equal weights, i.e. least squares: candidate inverse scales -(nmax + k/10) / x_max for
k = -9..9 (nmax 8 for Q4_0, 32 for Q6_K; x_max the value of largest magnitude), each value rounded
to its level, the least-squares scale for those levels, and the candidate with the smallest
squared error kept; the values are then rounded again against the scale stored.

Q4_K/Q5_K pick each sub-block's scale and minimum by a small search in the spirit of llama.cpp's
``make_qkx2_quants`` (ggml-quants.c): several candidate scales around the range's own, a least-
squares fit for each level assignment, the smallest squared error kept (no importance weights).
The 6- or 8-bit sub-block scales are then rounded against the block's float16 super-scales and
every value to the nearest level of its effective scale. Any GGUF reader decodes the result.
"""

from __future__ import annotations

import numpy as np

from .blocks import FORMATS

# Formats the gguf package encodes itself.
GGUF_ENCODED = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_1")
OWN_ENCODED = ("Q6_K", "Q5_K", "Q4_K", "Q4_0")
WRITABLE = GGUF_ENCODED + OWN_ENCODED
_CHUNK = 1 << 19          # elements encoded at once


def encode(rows: np.ndarray, qtype: str) -> np.ndarray:
    """float32 (rows, cols) -> uint8 (rows, bytes per row) in format ``qtype`` (cols a multiple
    of its block size; F32/F16 come back as float arrays, as GGUFWriter wants them)."""
    import gguf

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if qtype in GGUF_ENCODED:
        return gguf.quants.quantize(rows, getattr(gguf.GGMLQuantizationType, qtype))
    if qtype not in OWN_ENCODED:
        raise ValueError(f"cannot write {qtype}; writable types: {', '.join(WRITABLE)}")
    n_rows = rows.shape[0]
    blocks = rows.reshape(-1, FORMATS[qtype].block_size)
    encode_blocks = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k, "Q4_0": _q4_0}[qtype]
    step = _CHUNK // FORMATS[qtype].block_size     # a few MB at a time: twice as fast as whole tensors
    encoded = np.concatenate([encode_blocks(blocks[i:i + step]) for i in range(0, blocks.shape[0], step)])
    assert encoded.shape[1] == FORMATS[qtype].type_size
    return encoded.reshape(n_rows, -1)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (n, 2) bytes of float16."""
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, 0.0, a / np.where(b == 0, 1.0, b)).astype(np.float32)


def _symmetric_scales(blocks: np.ndarray, nmax: int) -> np.ndarray:
    """Per row of ``blocks``, the scale d with x ~ d * l, l in -nmax..nmax-1, found by the search of
    the module docstring (least squares over candidate inverse scales -(nmax + k/10) / x_max)."""
    pick = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
    best_score = np.full(blocks.shape[:-1], -1.0, dtype=np.float32)
    best_scale = np.zeros(blocks.shape[:-1], dtype=np.float32)
    for k in (0, *range(-9, 0), *range(1, 10)):
        levels = np.clip(np.rint(_safe_div(np.float32(-(nmax + k / 10)), pick) * blocks), -nmax, nmax - 1)
        sum_lx, sum_l2 = (levels * blocks).sum(axis=-1), (levels * levels).sum(axis=-1)
        score = _safe_div(sum_lx * sum_lx, sum_l2)        # squared error = sum x^2 - score
        better = score > best_score
        best_score = np.where(better, score, best_score)
        best_scale = np.where(better, _safe_div(sum_lx, sum_l2), best_scale)
    return best_scale


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    """Blocks of 32 with x ~ d * l, l in -8..7: d from the scale search of the module docstring."""
    d = _symmetric_scales(blocks, 8).astype(np.float16).astype(np.float32)
    q = (np.clip(np.rint(_safe_div(blocks, d[:, None])), -8, 7) + 8).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), q[:, :16] | (q[:, 16:] << 4)], axis=1)


def _asymmetric(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """Q4_K/Q5_K: 8 sub-blocks of 32 with x ~ d*sc*q - dmin*m, q in 0..levels, sc and m 6-bit."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)
    scale, minimum = _fit_sub_blocks(sub, levels)
    d = (scale.max(axis=1) / 63).astype(np.float16).astype(np.float32)
    dmin = (minimum.max(axis=1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(minimum, dmin[:, None])), 0, 63).astype(np.uint8)
    eff_d = d[:, None] * sc.astype(np.float32)
    eff_m = dmin[:, None] * m.astype(np.float32)
    q = np.clip(np.rint(_safe_div(sub + eff_m[..., None], eff_d[..., None])), 0, levels).astype(np.uint8)
    return d, dmin, _pack_k_scales(sc, m), q


def _fit_sub_blocks(sub: np.ndarray, levels: int, steps: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Per sub-block (scale, minimum >= 0) with x ~ scale*q - minimum, q in 0..levels: of the
    level assignments given by a few scales around the range's own (range / (levels + k/10),
    k = -4..4), the one whose least-squares fit leaves the smallest squared error. (More
    candidates gain little: 21 instead of 9 lower the Q4_K error on Gaussian weights from 7.1 %
    to 7.0 % at twice the time.)"""
    low = np.minimum(sub.min(axis=-1, keepdims=True), 0.0)   # the format subtracts a non-negative minimum
    span = sub.max(axis=-1, keepdims=True) - low
    best_err = np.full(sub.shape[:-1], np.inf, dtype=np.float32)
    best_scale = (span / levels)[..., 0]
    best_min = -low[..., 0]
    count = sub.shape[-1]
    sum_x = sub.sum(axis=-1)
    for k in range(steps):
        inverse = _safe_div(np.float32(levels + (k - steps // 2) / 10), span)
        q = np.clip(np.rint((sub - low) * inverse), 0, levels)
        sum_q, sum_q2, sum_xq = q.sum(-1), (q * q).sum(-1), (sub * q).sum(-1)
        det = count * sum_q2 - sum_q * sum_q
        scale = _safe_div(count * sum_xq - sum_q * sum_x, det)
        offset = _safe_div(sum_q2 * sum_x - sum_q * sum_xq, det)
        clipped = offset > 0                                   # minimum must be >= 0: refit through 0
        scale = np.where(clipped, _safe_div(sum_xq, sum_q2), scale)
        offset = np.where(clipped, 0.0, offset)
        err = ((scale[..., None] * q + offset[..., None] - sub) ** 2).sum(-1)
        better = (err < best_err) & (scale > 0)
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_min = np.where(better, -offset, best_min)
    return best_scale.astype(np.float32), best_min.astype(np.float32)


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and minima -> 12 bytes: sub-blocks 0-3 in the low 6 bits of bytes 0-3 /
    4-7, sub-blocks 4-7 in the nibbles of bytes 8-11 plus the top 2 bits of bytes 0-7."""
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return out


def _nibble_pairs(q: np.ndarray) -> np.ndarray:
    """(n, 8, 32) values < 16, sub-block 2c+k -> (n, 128): byte 32c+l holds (c, 0, l) low, (c, 1, l) high."""
    pairs = q.reshape(q.shape[0], 4, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(q.shape[0], 128)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _asymmetric(blocks, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, _nibble_pairs(q)], axis=1)


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _asymmetric(blocks, 31)
    # Bit j of qh[l] is the fifth bit of element l of sub-block j.
    high = ((q >> 4) & 1).astype(np.uint8)                            # (n, 8, 32)
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, qh, _nibble_pairs(q & 0xF)], axis=1)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    """16 sub-blocks of 16 with x ~ d*sc*q, q in -32..31, sc int8 (symmetric)."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    scale = _symmetric_scales(sub, 32)
    d = (np.abs(scale).max(axis=1) / 127).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), -128, 127).astype(np.int8)
    eff = d[:, None] * sc.astype(np.float32)
    q = np.clip(np.rint(_safe_div(sub, eff[..., None])), -32, 31).astype(np.int16) + 32
    u = q.astype(np.uint8).reshape(n, 2, 4, 32)                       # (half h, r, l)
    # ql byte 64h + 32j + l: low nibble from r = j, high nibble from r = 2 + j.
    ql = ((u[:, :, 0:2] & 0xF) | ((u[:, :, 2:4] & 0xF) << 4)).reshape(n, 128)
    qh = (((u >> 4) & 3) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(axis=2, dtype=np.uint8)
    return np.concatenate([ql, qh.reshape(n, 64), sc.view(np.uint8), _f16_bytes(d)], axis=1)
