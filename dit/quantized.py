"""A Next-DiT from a GGUF file, its block weights kept in their ggml block format.

``dit.checkpoint.load_dit`` reads GGUF files like any other (``files/gguf.py`` gives TensorRefs);
this module adds what differs:

- the file must be a Next-DiT: ``general.architecture`` is ``lumina2`` (what city96's converter
  writes for NewBie and Lumina-2) or absent (then the tensor names decide, as for any file);
  another architecture (an SDXL UNet, a Llama, ...) is refused with its name;
- the Linear weights that the file stores block-quantised stay packed (``quant.linear.QuantLinear``:
  dequantised per layer at each forward, on the input's device, in the compute dtype): those of the
  repeated blocks and of the embedders (a ``Q4_K_M`` file quantises those too); every other
  quantised tensor (the pad tokens, and ``x_embedder``, whose weight the ControlNet trainer copies)
  is dequantised once at load into the plan's dtype, like the F16/F32 tensors.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..files.errors import WeightsError
from ..files.gguf import architecture
from ..files.tensors import TensorRef
from ..quant.linear import make_quant_linear
from .precision import is_fp8_weight

log = logging.getLogger(__name__)

# The embedders' Linear layers (no other code reads their weights directly).
EMBEDDER_LINEARS = ("t_embedder.mlp.", "cap_embedder.1.", "clip_text_pooled_proj.1.", "time_text_embed.1.",
                    "final_layer.adaLN_modulation.1.", "final_layer.linear.", "guidance_embedder.mlp.")
ARCHITECTURES = ("lumina2",)   # city96's ComfyUI-GGUF name for Lumina-2 / NewBie Next-DiTs
# What other architectures a GGUF names are, for the message (llama.cpp and city96 names).
_IMAGE_ARCHS = {"flux", "sd1", "sdxl", "sd3", "aura", "hidream", "cosmos", "ltxv", "hyvid", "wan",
                "qwen_image", "chroma"}


def is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def check_architecture(path: Path) -> None:
    """WeightsError unless the GGUF at ``path`` may hold a Next-DiT."""
    arch = architecture(path)
    if arch is None or arch in ARCHITECTURES:
        return
    if arch in _IMAGE_ARCHS:
        what = f"a diffusion model of another family ({arch})"
    else:
        what = f"a llama.cpp language model ({arch}), e.g. a text encoder"
    raise WeightsError(path, f"a GGUF of architecture {arch!r}: {what}, not a Next-DiT (NewBie / Lumina-2 "
                             f"GGUF files name 'lumina2'). Pick a NewBie or Lumina-2 diffusion model file.")


def packed_keys(state: Mapping[str, TensorRef]) -> dict[str, TensorRef]:
    """The Linear weights stored block-quantised: kept packed by the loader."""
    return {key: ref for key, ref in state.items()
            if ref.packed is not None and (is_fp8_weight(key) or key.startswith(EMBEDDER_LINEARS))}


def keep_packed(model: nn.Module, packed: Mapping[str, TensorRef]) -> None:
    """Turn the Linears of ``packed`` keys into QuantLinears (on the meta model, before loading)."""
    for key, ref in packed.items():
        make_quant_linear(model.get_submodule(key.removesuffix(".weight")), ref.packed.qtype, ref.packed.raw_shape)
    if packed:
        counts = Counter(ref.packed.qtype for ref in packed.values())
        log.info("GGUF: %s block weights kept quantised (%s)", len(packed),
                 ", ".join(f"{n} {q}" for q, n in sorted(counts.items())))


def describe(state: Mapping[str, TensorRef]) -> str:
    """The formats of a GGUF's tensors, e.g. 'Q4_K 252, F32 180' (for the log)."""
    counts = Counter(ref.packed.qtype if ref.packed else str(ref.dtype).removeprefix("torch.")
                     for ref in state.values())
    return ", ".join(f"{q} {n}" for q, n in counts.most_common())
