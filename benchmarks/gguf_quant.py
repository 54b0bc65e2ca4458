"""GGUF-quantised Next-DiT against bf16 at NewBie widths: resident memory, accuracy, step time.

(Not named gguf.py: run as a script, that name would hide the gguf package.)

A NewBie-width model (dim 2304, 24/8 heads, ffn 9216, cap 2560, clip 1024) with a few layers
and random weights is written as a bf16 safetensors file, quantised with the pack's quantize
command (refiners quantised too, the default) and loaded back with NextDiT's loader. Printed:

- resident memory: bytes of every parameter and buffer of the loaded model (non-quantised
  tensors in bf16 for all), as a ratio to the bf16 model;
- accuracy: one forward (CFG pair, fp32 compute) against the bf16 weights computed in fp32:
  ||a-b|| / ||b|| and max|a-b| / max|b|;
- per-step time: the same CFG-pair forward, each quantised model against the bf16-file model in
  the same compute dtype, interleaved repeats, medians, as ratios (dequantising every block
  weight at every step is the cost; on a GPU it is small next to the matrix products).

    python benchmarks/gguf_quant.py [--layers 2] [--refiners 1] [--repeats 5] [--device cpu] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import timed
from nextdit_nodes.dit.checkpoint import load_dit
from nextdit_nodes.dit.offload import tensor_bytes
from nextdit_nodes.dit.params import NextDiTParams
from nextdit_nodes.commands.quantize import quantize_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.factories import random_inputs, write_dit_checkpoint

TYPES = ("Q8_0", "Q5_K", "Q4_K", "Q4_0")


def _errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = (out - ref).float()
    return (diff.norm() / ref.norm()).item(), (diff.abs().max() / ref.abs().max()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--refiners", type=int, default=1)
    ap.add_argument("--ffn", type=int, default=9216)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="compute dtype for the timing (default: auto)")
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    device = torch.device(args.device)
    types = args.types.split(",")
    p = NextDiTParams(dim=2304, n_layers=args.layers, n_heads=24, n_kv_heads=8, ffn_dim=args.ffn, cap_dim=2560,
                      clip_dim=1024, n_refiner_layers=args.refiners)
    latent = args.size // 8
    inputs = random_inputs(p, [300, 40], latent_hw=(latent, latent), seed=1)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    timing_dtype = args.dtype or "auto"
    print(f"NewBie widths, {args.layers} layers + {args.refiners}+{args.refiners} refiners, ffn {args.ffn}; "
          f"CFG pair (300/40 caption tokens) at {args.size}px on {device}")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "dit-bf16.safetensors"
        write_dit_checkpoint(source, p, prefix="", norm_final=False, dtype=torch.bfloat16)
        files = {}
        for qtype in types:
            files[qtype] = Path(tmp) / f"dit-{qtype}.gguf"
            start = time.perf_counter()
            quantize_file(source, files[qtype], qtype)
            print(f"  quantised {qtype} in {time.perf_counter() - start:.1f} s, file "
                  f"{files[qtype].stat().st_size / source.stat().st_size:.3f}x of bf16")

        base_bytes = tensor_bytes(load_dit(source, "bf16"))
        print(f"\nresident memory (weights bf16 where not quantised); bf16 model {base_bytes / 1e9:.3f} GB")
        for qtype in types:
            print(f"  {qtype:5s} {tensor_bytes(load_dit(files[qtype], 'bf16')) / base_bytes:.3f}x")

        reference = load_dit(source, "fp32", device)
        with torch.no_grad():
            ref_out = reference(**inputs)
        print("\naccuracy against the bf16 weights (fp32 compute): ||a-b||/||b||, max|a-b|/max|b|")
        for qtype in types:
            with torch.no_grad():
                out = load_dit(files[qtype], "fp32", device)(**inputs)
            rel, peak = _errors(out, ref_out)
            print(f"  {qtype:5s} {rel:.4f}  {peak:.4f}")
        del reference

        models = {"bf16 file": load_dit(source, timing_dtype, device)}
        models.update({qtype: load_dit(files[qtype], timing_dtype, device) for qtype in types})
        samples = {name: [] for name in models}
        with torch.no_grad():
            for model in models.values():       # warm-up
                timed(lambda: model(**inputs), device)
            for _ in range(args.repeats):
                for name, model in models.items():
                    samples[name].append(timed(lambda: model(**inputs), device))
        base = statistics.median(samples["bf16 file"])
        print(f"\nper step ({timing_dtype} compute), median of {args.repeats}: bf16 file {base:.3f} s")
        for qtype in types:
            print(f"  {qtype:5s} {statistics.median(samples[qtype]) / base:.2f}x")


if __name__ == "__main__":
    main()
