"""CFG cost per sampling step: packed cond+uncond forward vs two separate forwards vs distilled.

    python benchmarks/cfg.py [--layers 2] [--size 256] [--repeats 3] [--device cpu]

NewBie widths (dim 2304, 24/8 heads, ffn 9216, cap 2560, clip 1024) with a few layers and random
weights, a 300-token positive and a 40-token negative. Each repeat times, side by side:
- packed: ``GuidedVelocity`` with cfg > 1 (one forward over both prompts' real tokens);
- separate: two forwards, cond then uncond, as core ComfyUI runs prompts of different lengths;
- distilled: ``GuidedVelocity`` with cfg 1 and a guidance scale (one forward, positive only).
Prints the median seconds per step and the ratios (targets: packed/separate ≤ 1.05 on CPU;
distilled/packed about 0.65 at this size, since the single forward skips the 40-token branch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import NextDiTParams
from nextdit_nodes.text.conditioning import prompt_batches
from nextdit_nodes.sampling.guidance import GuidedVelocity, combine_cfg


def _conditioning(length: int, params: NextDiTParams, generator: torch.Generator):
    return [[torch.randn(1, length, params.cap_dim, generator=generator),
             {"pooled_output": torch.randn(1, params.clip_dim, generator=generator)}]]


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="joint layers (NewBie has 36)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    params = NextDiTParams(dim=2304, n_layers=args.layers, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560,
                           clip_dim=1024, guidance_embed=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = NextDiT(params).to(dtype).eval().requires_grad_(False)
    model.compute_dtype = dtype
    g = torch.Generator().manual_seed(0)
    positive, negative = _conditioning(300, params, g), _conditioning(40, params, g)
    pos = prompt_batches(positive, 1, params.cap_dim, params.clip_dim)
    neg = prompt_batches(negative, 1, params.cap_dim, params.clip_dim)
    x = torch.randn(1, 16, args.size // 8, args.size // 8, generator=g).to(device)
    t = 0.3

    packed = GuidedVelocity(model, pos, neg, cfg=5.0, renorm_cfg=0.0, cfg_trunc=1.0)
    distilled = GuidedVelocity(model, pos, None, cfg=1.0, renorm_cfg=0.0, cfg_trunc=1.0, guidance=4.0)
    cond, uncond = packed.cond_only, GuidedVelocity(model, neg, None, 1.0, 0.0, 1.0).cond_only
    t_batch = torch.full((1,), t, device=device)

    def separate():
        v_c = model(x, t_batch, cond.feats, cond.mask, cond.pooled)
        v_u = model(x, t_batch, uncond.feats, uncond.mask, uncond.pooled)
        return combine_cfg(v_c, v_u, 5.0, 0.0)

    cases = {"packed CFG": lambda: packed(x, t), "two forwards": separate, "distilled": lambda: distilled(x, t)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for fn in cases.values():  # warm-up
            fn()
        for _ in range(args.repeats):  # interleaved, so machine noise hits every case alike
            for name, fn in cases.items():
                times[name].append(_timed(fn, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"NewBie widths, {args.layers} layers + 2+2 refiners, {args.size}x{args.size}, 300-token positive, "
          f"40-token negative, {args.dtype} on {device}, median of {args.repeats}:")
    for name, seconds in median.items():
        print(f"  {name:13s} {seconds:8.3f} s/step")
    print(f"  packed / two forwards = {median['packed CFG'] / median['two forwards']:.3f}  (target <= 1.05)")
    print(f"  distilled / packed    = {median['distilled'] / median['packed CFG']:.3f}  (about 0.65 expected)")
    print(f"  distilled / two fwd   = {median['distilled'] / median['two forwards']:.3f}")


if __name__ == "__main__":
    main()
