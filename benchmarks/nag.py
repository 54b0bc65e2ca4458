"""NAG's cost per sampling step at NewBie widths, against the plain cfg-1 step and packed CFG.

    python benchmarks/nag.py [--layers 2] [--size 512] [--negative 40] [--repeats 3] [--device cpu]

NewBie widths (dim 2304, 24/8 heads, ffn 9216, cap 2560, clip 1024) with random weights and
``--layers`` joint layers (+ 2+2 refiners), a 300-token positive, one image of ``--size`` pixels.
Cases, timed as medians of interleaved repeats in one run:
- cfg 1: ``GuidedVelocity`` at cfg 1, one forward over the positive;
- NAG: the same with ``steering.nag`` attached (scale 5, tau 2.5, alpha 0.25) and a
  ``--negative``-token negative prompt: the negative caption stream and a second attention for the
  image queries in every joint layer (its refined negative is computed once, in the warm-up);
- packed CFG 5: both prompts in one forward, for comparison.
Target: NAG / cfg 1 <= 1.35.

With few layers the refiners and embedders weigh more than in the 36-layer model, which would
flatter NAG's ratio. So each case is also timed with its joint layers skipped (a seam entry
returning the joint tokens unchanged); (full − skipped) / layers is one joint layer's cost, and
the ratio for NewBie's 36 layers is estimated as (skipped + 36 · layer) of NAG over that of cfg 1.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import random_conditioning, timed

from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import NextDiTParams
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.guidance import GuidedVelocity
from nextdit_nodes.steering.nag import NAGGuidance, NAGSettings, attached
from nextdit_nodes.text.conditioning import read_entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="joint layers (NewBie has 36)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (NewBie: 1024)")
    parser.add_argument("--negative", type=int, default=40, help="tokens of the negative prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    params = NextDiTParams(dim=2304, n_layers=args.layers, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560,
                           clip_dim=1024)
    torch.manual_seed(0)
    with torch.device(device):
        model = NextDiT(params).to(dtype).eval().requires_grad_(False)
    model.compute_dtype = dtype
    g = torch.Generator().manual_seed(0)
    positive, negative = random_conditioning(300, params, g), random_conditioning(args.negative, params, g)
    pos = read_entries(positive, 1, params.cap_dim, params.clip_dim)
    neg = read_entries(negative, 1, params.cap_dim, params.clip_dim, "negative")
    x = torch.randn(1, 16, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(1)).to(device)
    t = 0.3
    nag = NAGGuidance(model, neg[0].batch.to(device), NAGSettings(negative), (0.0, 1.0))
    plain = GuidedVelocity(model, pos, None, SamplerSettings(cfg=1.0, cfg_trunc=1.0))
    guided = GuidedVelocity(model, pos, None, SamplerSettings(cfg=1.0, cfg_trunc=1.0), steering=[nag])
    packed = GuidedVelocity(model, pos, neg, SamplerSettings(cfg=5.0, cfg_trunc=1.0))

    def with_nag():
        with attached(model, nag):
            return guided(x, t)

    def skipping(fn):
        def run():
            model.seam.attach("skip_layers", _SkipLayers())
            try:
                return fn()
            finally:
                model.seam.detach("skip_layers")
        return run

    cases = {"cfg 1": lambda: plain(x, t), "NAG": with_nag, "packed CFG 5": lambda: packed(x, t)}
    cases.update({f"{name}, no layers": skipping(cases[name]) for name in ("cfg 1", "NAG")})
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        # The warm-up computes NAG's refined negative (once per sampling run); on a GPU it also
        # settles the kernels of every case.
        for name, fn in cases.items():
            if device.type == "cuda" or name == "NAG":
                fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"Per step: NewBie widths (ffn 9216), {args.layers} joint layers + 2+2 refiners, {args.size}x{args.size}, "
          f"300-token positive, {args.negative}-token negative, {args.dtype} on {device}, median of {args.repeats}:")
    for name, seconds in median.items():
        print(f"  {name:13s} {seconds:8.3f} s/step")
    print(f"  NAG / cfg 1        = {median['NAG'] / median['cfg 1']:.3f}  (target <= 1.35)")
    print(f"  packed CFG / cfg 1 = {median['packed CFG 5'] / median['cfg 1']:.3f}")

    def at_36(name: str) -> float:
        layer = (median[name] - median[f"{name}, no layers"]) / args.layers
        return median[f"{name}, no layers"] + 36 * layer

    print(f"  one joint layer: cfg 1 {(median['cfg 1'] - median['cfg 1, no layers']) / args.layers:.3f} s, "
          f"NAG {(median['NAG'] - median['NAG, no layers']) / args.layers:.3f} s")
    print(f"  estimated at 36 layers: NAG / cfg 1 = {at_36('NAG') / at_36('cfg 1'):.3f}")


class _SkipLayers:
    """A seam entry that runs no joint layer (the rest of the step's cost)."""

    def joint_layers(self, run, joint, ctx):
        return joint


if __name__ == "__main__":
    main()
