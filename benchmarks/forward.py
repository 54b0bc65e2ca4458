"""Packed variable-length batch vs two separate forwards vs a padded batch (Next-DiT forward).

A cond + uncond pair as CFG runs it: an XML prompt (300 caption tokens) and a short negative
(40 tokens) at 256x256 (32x32 latent, 256 image tokens), NewBie widths (dim 2304, 24/8 heads,
ffn 9216, cap 2560, clip 1024) with a few layers. Ratios are measured side by side in one run
(interleaved repeats, medians), so they hold on a noisy machine; absolute times only mean
something on a quiet GPU.

The padded batch is timed as the same model with both captions at 300 tokens: the FLOPs of the
official padded forward, where the short caption's 260 padding rows go through every linear
layer and attention runs over the padded length (a key mask does not reduce the work).

    python benchmarks/forward.py [--layers 2] [--repeats 5] [--device cpu] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import NextDiTParams


def _inputs(p: NextDiTParams, cap_lens: list[int], latent: int, device, gen) -> dict:
    b, length = len(cap_lens), max(cap_lens)
    mask = torch.arange(length)[None] < torch.tensor(cap_lens)[:, None]
    return dict(
        x=torch.randn(b, p.in_channels, latent, latent, generator=gen).to(device),
        t=torch.rand(b, generator=gen).to(device),
        cap_feats=torch.randn(b, length, p.cap_dim, generator=gen).to(device),
        cap_mask=mask.to(device),
        clip_pooled=torch.randn(b, p.clip_dim, generator=gen).to(device),
    )


def _split(inputs: dict) -> list[dict]:
    out = []
    for i in range(inputs["x"].shape[0]):
        n = int(inputs["cap_mask"][i].sum())
        one = {k: v[i:i + 1] for k, v in inputs.items()}
        one["cap_feats"], one["cap_mask"] = one["cap_feats"][:, :n], one["cap_mask"][:, :n]
        out.append(one)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    p = NextDiTParams(dim=2304, n_layers=args.layers, n_heads=24, n_kv_heads=8, ffn_dim=9216,
                      cap_dim=2560, clip_dim=1024)
    torch.manual_seed(0)
    model = NextDiT(p, device=device).to(dtype).eval().requires_grad_(False)
    model.compute_dtype = dtype
    gen = torch.Generator().manual_seed(0)
    latent = args.size // 8
    packed = _inputs(p, [300, 40], latent, device, gen)
    separate = _split(packed)
    padded = _inputs(p, [300, 300], latent, device, gen)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    runs = {
        "packed batch": lambda: model(**packed),
        "two separate forwards": lambda: [model(**one) for one in separate],
        "padded batch (300+300)": lambda: model(**padded),
    }
    with torch.inference_mode():
        for fn in runs.values():       # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["two separate forwards"]
    print(f"device {device}, {args.dtype}, {args.layers} layers + 2+2 refiners, {args.size}x{args.size}, "
          f"captions 300 + 40 tokens, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, t in med.items():
        absolute = f"   {t * 1000:8.1f} ms" if device.type == "cuda" else ""
        print(f"  {name:24s} {t / base:5.3f} x two separate forwards{absolute}")
    print(f"  packed / padded = {med['packed batch'] / med['padded batch (300+300)']:.3f}")


if __name__ == "__main__":
    main()
