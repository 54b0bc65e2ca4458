"""Per-step forward cost of a Next-DiT with a ControlNet vs without, at NewBie widths.

NewBie widths (dim 2304, 24/8 heads, ffn 9216, cap 2560, clip 1024) with a few joint layers and a
ControlNet of --blocks control blocks (random weights, projections non-zero so nothing is skipped),
one image of --size² and a --caption-token caption. Both forwards are timed interleaved in one run
(medians), so the ratio holds on a noisy machine. A control block costs what a joint layer costs
(the same block over the same tokens) plus a dim x dim projection of the image tokens, so the
printed estimate for the full 36-layer NewBie is 1 + blocks x (measured extra per block) /
(measured time per joint layer x (36 + refiners)); the measured ratio is for the layers built here.

    python benchmarks/controlnet.py [--layers 4] [--blocks 2] [--repeats 5] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import timed

from nextdit_nodes.controlnet.apply import ActiveControl, controls_attached
from nextdit_nodes.controlnet.model import ControlNetParams, NextDiTControlNet
from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import NextDiTParams

NEWBIE_LAYERS = 36


def inputs(p: NextDiTParams, latent: int, cap_len: int, device, dtype) -> tuple:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(1, p.in_channels, latent, latent, generator=gen).to(device, dtype),
            torch.rand(1, generator=gen).to(device),
            torch.randn(1, cap_len, p.cap_dim, generator=gen).to(device, dtype),
            torch.ones(1, cap_len, dtype=torch.bool, device=device),
            torch.randn(1, p.clip_dim, generator=gen).to(device, dtype))


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--refiners", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--caption", type=int, default=128, help="caption tokens")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    p = NextDiTParams(dim=2304, n_layers=args.layers, n_heads=24, n_kv_heads=8, ffn_dim=9216,
                      cap_dim=2560, clip_dim=1024, n_refiner_layers=args.refiners)
    model = NextDiT(p).to(device, dtype).eval().requires_grad_(False)
    model.compute_dtype = dtype
    net = NextDiTControlNet(ControlNetParams.like(p, args.blocks))
    for projection in net.control_projections:
        torch.nn.init.normal_(projection.weight, std=1e-3)
    net = net.to(device, dtype).eval()
    x, t, feats, mask, pooled = inputs(p, args.size // 8, args.caption, device, dtype)
    hint = torch.randn_like(x)
    control = [ActiveControl(net, hint, 1.0)]

    def plain():
        model(x, t, feats, mask, pooled)

    def controlled():
        with controls_attached(model, control):
            model(x, t, feats, mask, pooled)

    layer_times = []

    def one_layer():   # a joint layer alone, for the full-size estimate
        captured = {}
        handle = model.layers[0].register_forward_pre_hook(lambda m, a: captured.setdefault("args", a))
        plain()
        handle.remove()
        return lambda: model.layers[0](*captured["args"])

    layer = one_layer()
    for call in (plain, controlled, layer):   # warm-up
        timed(call, device)
    plain_times, control_times = [], []
    for _ in range(args.repeats):
        plain_times.append(timed(plain, device))
        control_times.append(timed(controlled, device))
        layer_times.append(timed(layer, device))
    t_plain, t_control, t_layer = (statistics.median(v) for v in (plain_times, control_times, layer_times))

    tokens = (args.size // 16) ** 2 + args.caption
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    print(f"device {device}{threads}, {args.dtype}, NewBie widths, {args.layers} layers + "
          f"{args.refiners}+{args.refiners} refiners, {tokens} tokens ({args.size}x{args.size} + "
          f"{args.caption} caption), ControlNet of {args.blocks} blocks")
    print(f"without ControlNet  median {t_plain * 1e3:8.1f} ms  ({args.repeats} runs)")
    print(f"with ControlNet     median {t_control * 1e3:8.1f} ms")
    print(f"one joint layer     median {t_layer * 1e3:8.1f} ms")
    print(f"ratio with/without: {t_control / t_plain:.3f} (these {args.layers} layers)")
    full = t_layer * (NEWBIE_LAYERS + 2 * args.refiners) + (t_plain - t_layer * (args.layers + 2 * args.refiners))
    print(f"estimate for the {NEWBIE_LAYERS}-layer NewBie: {(full + t_control - t_plain) / full:.3f}")


if __name__ == "__main__":
    main()
