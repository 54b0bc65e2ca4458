"""Writing a Next-DiT state dict as a GGUF file in city96's layout (ComfyUI-GGUF).

The layout other GGUF loaders expect (city96's ``tools/convert.py`` and his llama.cpp patch
``tools/lcpp.patch``, github.com/city96/ComfyUI-GGUF): tensor names are the official state-dict
keys, no prefix; ``general.architecture`` is ``lumina2``; ``general.quantization_version`` and
``general.file_type`` are set; dimensions are written innermost first (the ``gguf`` package does
that from the numpy shape). Nothing needs the ``comfy.gguf.orig_shape`` reshaping (only
convolution models use it), so no tensor is reshaped.

Which tensors stay unquantised (``tensor_format``), following that convention:
- 1-D tensors (norm weights, biases) and any tensor of at most 1024 elements: F32 (F16 when the
  source tensor is fp16), as convert.py does;
- the embedders and the final layer (``t_embedder``, ``x_embedder``, ``cap_embedder``,
  ``final_layer``, plus NewBie's ``clip_text_pooled_proj`` and ``time_text_embed`` and a
  distilled model's ``guidance_embedder``): BF16 for a bf16 source, else F16, as city96's
  ``lumina2`` rule keeps them;
- a matrix whose rows do not split into blocks of the type (32, or 256 for the K types): BF16/F16,
  the fallback llama.cpp uses;
- every other matrix, i.e. the Linear weights of the repeated blocks, in the requested type. The
  ``lumina2`` rule of city96's patch also keeps the refiner blocks (``context_refiner``,
  ``noise_refiner``) unquantised; ``keep_refiners=True`` does the same. By default they are
  quantised: at NewBie size they are 330 M of the 3.5 G parameters, and keeping them in BF16 costs
  0.66 GB (Q4_K resident memory 0.35x of bf16 instead of 0.28x).
One type for every quantised matrix, except the mix ``Q4_K_M`` (llama.cpp's idea of the name:
mostly Q4_K, the most sensitive matrices in Q6_K). Which matrices are sensitive was measured on a
NewBie-width model by quantising one group at a time: per weight, the attention (``qkv``, ``out``)
and the adaLN modulation of every block carry about seven times the forward error of the
feed-forward matrices (README, GGUF section), and they are 27 % of a block's weights; so ``Q4_K_M``
writes those in Q6_K and the feed-forward in Q4_K. Like llama.cpp's mixes, which quantise the token
embedding and the output matrix too, ``Q4_K_M`` also quantises the embedders' matrices, each as far
as its measured cost allows (one matrix in Q6_K at a time, the rest exact, NewBie widths): the
caption embedder, the timestep MLP and the final adaLN cost the forward under 0.5 % each and go to
Q6_K; the two pooled-text projections cost about 1.2 % and go to Q8_0 (``MIX_EMBEDDERS``); the
final projection to patches (1.7 %) and ``x_embedder`` (0.6 % even in Q8_0) stay BF16/F16. At NewBie size this saves
little (40 MB), but at a few layers the unquantised embedders are a tenth of a Q4 file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .blocks import FORMATS
from .encode import WRITABLE, encode
from .types import FILE_TYPES, MIXES, QUANT_TYPES

ARCHITECTURE = "lumina2"
QUANTIZATION_THRESHOLD = 1024      # tensors of at most this many elements stay F32
# Key prefixes kept unquantised (city96's lumina2 rule and NewBie's own small embedders).
KEEP_PREFIXES = ("t_embedder.", "x_embedder.", "cap_embedder.", "final_layer.", "clip_text_pooled_proj.",
                 "time_text_embed.", "guidance_embedder.")
REFINER_PREFIXES = ("context_refiner.", "noise_refiner.")
SENSITIVE = (".attention.qkv.", ".attention.out.", ".adaLN_modulation.")   # Q6_K in a Q4_K_M file
# A mix's embedder matrices (the docstring): the type each is written in, by its measured cost.
MIX_EMBEDDERS = {"cap_embedder.1.weight": "Q6_K", "t_embedder.mlp.0.weight": "Q6_K",
                 "t_embedder.mlp.2.weight": "Q6_K", "final_layer.adaLN_modulation.1.weight": "Q6_K",
                 "clip_text_pooled_proj.1.weight": "Q8_0", "time_text_embed.1.weight": "Q8_0"}


def tensor_format(key: str, shape: tuple[int, ...], source: torch.dtype, qtype: str,
                  keep_refiners: bool = False) -> str:
    """The format ``key`` is written in for a file of type ``qtype`` (rules in the docstring)."""
    plain = "BF16" if source == torch.bfloat16 else "F16"
    if len(shape) == 1 or math.prod(shape) <= QUANTIZATION_THRESHOLD:
        return "F16" if source == torch.float16 else "F32"
    if qtype in ("F16", "BF16"):
        return qtype
    mixed_embedder = qtype in MIXES and key in MIX_EMBEDDERS
    if qtype in MIXES:
        base, sensitive = MIXES[qtype]
        qtype = MIX_EMBEDDERS.get(key) or (sensitive if any(part in key for part in SENSITIVE) else base)
    if not mixed_embedder and (key.startswith(KEEP_PREFIXES) or (keep_refiners and key.startswith(REFINER_PREFIXES))):
        return plain
    if len(shape) != 2 or shape[1] % FORMATS[qtype].block_size:
        return plain
    return qtype


def write_gguf(path, tensors: Iterable[tuple[str, Callable[[], torch.Tensor], tuple[int, ...], torch.dtype]],
               qtype: str, keep_refiners: bool = False, metadata: dict[str, str] | None = None,
               progress: Callable[[str, str], None] | None = None) -> dict[str, int]:
    """Write ``tensors`` ((key, load(), shape, source dtype) in file order) to ``path`` as a
    ``lumina2`` GGUF of type ``qtype``; returns how many tensors went into each format.

    Each tensor is loaded, encoded and dropped in turn (only the encoded file is held in
    memory). ``metadata``: extra string fields (e.g. a few-step student's sampling settings).
    """
    import gguf

    if qtype not in QUANT_TYPES:
        raise ValueError(f"unknown type {qtype!r}; choose one of {', '.join(QUANT_TYPES)}")
    assert set(QUANT_TYPES) - set(MIXES) <= set(WRITABLE)
    writer = gguf.GGUFWriter(path=None, arch=ARCHITECTURE)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(FILE_TYPES[qtype])
    for name, value in (metadata or {}).items():
        writer.add_string(name, value)
    counts: dict[str, int] = {}
    for key, load, shape, source in tensors:
        fmt = tensor_format(key, shape, source, qtype, keep_refiners)
        data = load().detach().to("cpu", torch.float32).numpy()
        if fmt == "F32":
            encoded = data
        elif fmt == "F16":
            encoded = data.astype(np.float16)
        else:
            encoded = encode(data.reshape(-1, shape[-1]) if data.ndim != 2 else data, fmt)
            if data.ndim != 2:
                encoded = encoded.reshape(*shape[:-1], -1)
        writer.add_tensor(key, encoded, raw_dtype=getattr(gguf.GGMLQuantizationType, fmt))
        counts[fmt] = counts.get(fmt, 0) + 1
        if progress is not None:
            progress(key, fmt)
    path = Path(path)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts
