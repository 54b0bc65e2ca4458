"""``python -m nextdit_nodes quantize FILE --type Q8_0 --output FILE.gguf``: a GGUF Next-DiT.

FILE is anything NextDiT Loader reads (safetensors, sharded, a diffusers folder, a training
checkpoint, another GGUF; prefixes and layouts cleaned to the official keys and checked against
the model its shapes describe). The output is a ``lumina2`` GGUF in city96's ComfyUI-GGUF layout:
NextDiT Loader reads it, and so should ComfyUI-GGUF's loader, which expects that layout. Which tensors stay unquantised
(norms, biases, embedders, the final layer: F32/F16/BF16) is described in quant/gguf_write.py;
--keep-refiners also keeps the refiner blocks unquantised, as city96's own lumina2 files do.

Types: Q8_0 (8.5 bits per weight), Q6_K (6.56), Q5_K (5.5), Q5_1 (6), Q5_0 (5.5), Q4_K_M (the
attention and adaLN matrices Q6_K, the feed-forward Q4_K: 5.0; most embedders quantised too),
Q4_K (4.5), Q4_1 (5), Q4_0 (4.5); BF16/F16 for an unquantised GGUF. The K types and Q4_0 are
encoded by the pack (the gguf package only decodes the K types); the others by the gguf package.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..runtime.model_sources import resolve_model
from .arguments import UsageError

log = logging.getLogger(__name__)


class QuantizeError(UsageError):
    """A bad quantize command line or an unreadable source file."""


def register(subparsers) -> None:
    from ..quant.types import QUANT_TYPES

    parser = subparsers.add_parser(
        "quantize", help="write a Next-DiT as a GGUF file (Q8_0, Q5_K, Q4_K, ...)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Next-DiT weights: a name in models/diffusion_models or a path")
    parser.add_argument("--type", required=True, choices=QUANT_TYPES, help="format of the quantised matrices")
    parser.add_argument("--output", type=Path,
                        help="the .gguf file to write (default: <source stem>-<type>.gguf next to the source)")
    parser.add_argument("--keep-refiners", action="store_true",
                        help="keep the refiner blocks unquantised (city96's lumina2 rule; larger file)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..files.errors import WeightsError

    logging.getLogger("gguf").setLevel(logging.WARNING)   # its writer logs every file it writes at INFO
    source = resolve_model("diffusion_models", args.source)
    output = args.output or source.with_name(f"{source.stem}-{args.type}.gguf")
    if output.suffix.lower() != ".gguf":
        raise QuantizeError(f"--output {output} must end in .gguf")
    if output.exists() and not args.overwrite:
        raise QuantizeError(f"{output} exists; choose another --output or pass --overwrite")
    try:
        counts = quantize_file(source, output, args.type, args.keep_refiners)
    except WeightsError as error:
        raise QuantizeError(str(error)) from None
    size = output.stat().st_size
    print(f"wrote {output} ({size / 1e6:,.1f} MB): " + ", ".join(f"{n} {f}" for f, n in counts.items()))
    return 0


def quantize_file(source: Path, output: Path, qtype: str, keep_refiners: bool = False) -> dict[str, int]:
    """Write the Next-DiT at ``source`` to ``output`` as a GGUF of ``qtype``; returns the tensor
    count per format. WeightsError (naming the file) for a source that is not a whole Next-DiT."""
    import torch

    from ..dit.checkpoint import check_keys, infer_params
    from ..dit.keys import official_refs
    from ..dit.model import NextDiT
    from ..files.gguf import PACK_FIELD
    from ..files.tensors import open_weights, read_metadata
    from ..quant.gguf_write import write_gguf

    raw = open_weights(source, subfolder="transformer")
    state = official_refs(source, raw)
    params = infer_params(state, source)
    expected = {k: tuple(v.shape) for k, v in NextDiT(params, device="meta").state_dict().items()}
    check_keys(source, expected, state, raw)
    # Sampling settings a few-step student records travel as string fields of the same names.
    metadata = {PACK_FIELD + k: v for k, v in read_metadata(source).items()}
    tensors = ((key, lambda ref=state[key]: ref.load(torch.float32, own=True), tuple(state[key].shape),
                state[key].dtype) for key in expected)
    tmp = output.with_name(output.name + ".partial")
    try:
        counts = write_gguf(tmp, tensors, qtype, keep_refiners, metadata,
                            progress=lambda key, fmt: log.debug("%s -> %s", key, fmt))
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return counts
