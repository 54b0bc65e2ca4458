"""GGUF: the pack's torch dequantisation against the gguf package's numpy reference, reading
city96-layout files, the quantised Linear, writing with the quantize command."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from nextdit_nodes.quant.blocks import FORMATS, PACKED, dequantize  # noqa: E402

# Byte offsets of the float16 fields of each format (random bytes there could be inf/NaN).
_F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
               "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(qtype: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random bytes for ``n_blocks`` blocks: every bit pattern is a valid block once the float16
    scales are finite, so this exercises every code path of a format."""
    fmt = FORMATS[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_blocks, fmt.type_size), dtype=np.uint8)
    for offset in _F16_FIELDS.get(qtype, ()):
        scale = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    if qtype == "BF16":
        values = rng.standard_normal(n_blocks).astype(np.float32)
        blocks = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("qtype", PACKED + ("F16", "F32"))
def test_dequantisation_equals_the_gguf_package(qtype):
    fmt = FORMATS[qtype]
    if qtype in ("F16", "F32"):
        values = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float16 if qtype == "F16" else np.float32)
        raw = values.view(np.uint8)
        cols = 64
    else:
        rows, blocks_per_row = 6, 2
        raw = random_blocks(qtype, rows * blocks_per_row).reshape(rows, -1)
        cols = blocks_per_row * fmt.block_size
    reference = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, qtype))
    ours = dequantize(torch.from_numpy(raw), qtype, (raw.shape[0], cols))
    assert ours.dtype == torch.float32 and tuple(ours.shape) == reference.shape
    # Bit for bit: the same float32 products in the same order.
    assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(reference)))


def test_format_table_matches_the_gguf_package():
    for name, fmt in FORMATS.items():
        member = getattr(gguf.GGMLQuantizationType, name)
        assert int(member) == fmt.ggml_id
        assert gguf.GGML_QUANT_SIZES[member] == (fmt.block_size, fmt.type_size)
