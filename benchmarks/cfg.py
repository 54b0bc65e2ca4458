"""CFG and few-step costs at NewBie widths: per sampling step, then per image.

    python benchmarks/cfg.py [--layers 2] [--size 256] [--image-layers 6] [--image-ffn 2304]
                             [--image-size 128] [--cache 0.05] [--repeats 3] [--device cpu]

NewBie widths (dim 2304, 24/8 heads, cap 2560, clip 1024) with random weights, a 300-token
positive and a 40-token negative.

Per step (ffn 9216, ``--layers``, ``--size``), side by side:
- packed: ``GuidedVelocity`` with cfg > 1 (one forward over both prompts' real tokens);
- separate: two forwards, cond then uncond, as core ComfyUI runs prompts of different lengths;
- distilled: ``GuidedVelocity`` with cfg 1 and a guidance scale (one forward, positive only).
Targets: packed/separate ≤ 1.05 on CPU; distilled/packed about 0.65 at this size, since the
single forward skips the 40-token branch.

Per image (``--image-layers``, ``--image-ffn``, ``--image-size``: a narrower, smaller model so the
official settings' 34 evaluations take a minute or two on a CPU; on a GPU pass the real sizes,
``--image-layers 36 --image-ffn 9216 --image-size 1024``), one whole ``sampling.sample`` run each:
- official: 17 midpoint steps (34 evaluations), CFG 5 while t < 0.25 (both branches packed);
- guidance-distilled: the same steps at cfg 1 with a guidance scale (one branch);
- few-step: 4 Euler steps of a guidance-distilled model, as ``distill --steps 4`` makes it;
- official + step cache at ``--cache``. How many evaluations it skips depends on the weights, so
  the count is printed with the time (random weights need not behave like trained ones; the
  README has the embedded model's counts).
Prints medians of ``--repeats`` interleaved runs and the ratios.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import statistics

import torch
from timing import random_conditioning, timed

from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import NextDiTParams
from nextdit_nodes.sampling.guidance import GuidedVelocity, combine_cfg
from nextdit_nodes.sampling.sample import SamplingReport, sample
from nextdit_nodes.sampler_settings import OFFICIAL, SamplerSettings
from nextdit_nodes.text.conditioning import read_entries


def _medians(cases: dict, repeats: int, device: torch.device, warm_up: list[str]) -> dict[str, float]:
    """Median seconds of each case, the repeats interleaved so machine noise hits every case alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for name in warm_up:
            cases[name]()
        for _ in range(repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def _model(layers: int, ffn: int, device: torch.device, dtype: torch.dtype) -> NextDiT:
    params = NextDiTParams(dim=2304, n_layers=layers, n_heads=24, n_kv_heads=8, ffn_dim=ffn, cap_dim=2560,
                           clip_dim=1024, guidance_embed=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = NextDiT(params).to(dtype).eval().requires_grad_(False)
    model.compute_dtype = dtype
    return model


def per_step(model: NextDiT, positive, negative, size: int, repeats: int, device: torch.device) -> None:
    params = model.params
    pos = read_entries(positive, 1, params.cap_dim, params.clip_dim)
    neg = read_entries(negative, 1, params.cap_dim, params.clip_dim, "negative")
    x = torch.randn(1, 16, size // 8, size // 8, generator=torch.Generator().manual_seed(1)).to(device)
    t = 0.3
    packed = GuidedVelocity(model, pos, neg, SamplerSettings(cfg=5.0, cfg_trunc=1.0))
    distilled = GuidedVelocity(model, pos, None, SamplerSettings(cfg=1.0, cfg_trunc=1.0, guidance=4.0))
    cond, uncond = (entries[0].batch.to(device) for entries in (pos, neg))
    t_batch = torch.full((1,), t, device=device)

    def separate():
        v_c = model(x, t_batch, cond.feats, cond.mask, cond.pooled)
        v_u = model(x, t_batch, uncond.feats, uncond.mask, uncond.pooled)
        return combine_cfg(v_c, v_u, 5.0, 0.0)

    cases = {"packed CFG": lambda: packed(x, t), "two forwards": separate, "distilled": lambda: distilled(x, t)}
    median = _medians(cases, repeats, device, warm_up=list(cases))
    print(f"Per step: NewBie widths (ffn {params.ffn_dim}), {params.n_layers} layers + 2+2 refiners, "
          f"{size}x{size}, median of {repeats}:")
    for name, seconds in median.items():
        print(f"  {name:13s} {seconds:8.3f} s/step")
    print(f"  packed / two forwards = {median['packed CFG'] / median['two forwards']:.3f}  (target <= 1.05)")
    print(f"  distilled / packed    = {median['distilled'] / median['packed CFG']:.3f}  (about 0.65 expected)")
    print(f"  distilled / two fwd   = {median['distilled'] / median['two forwards']:.3f}")


def per_image(model: NextDiT, positive, negative, size: int, cache: float, repeats: int,
              device: torch.device) -> None:
    settings = {
        "official": OFFICIAL,
        "guidance-distilled": replace(OFFICIAL, cfg=1.0, guidance=OFFICIAL.cfg),
        "few-step (4 euler)": replace(OFFICIAL, steps=4, solver="euler", cfg=1.0, guidance=OFFICIAL.cfg),
        f"official + cache {cache:g}": replace(OFFICIAL, step_cache=cache),
    }
    reports = {name: SamplingReport() for name in settings}

    def image(name: str):
        return lambda: sample(model, positive, negative, settings[name], width=size, height=size, seed=0,
                              report=reports[name])

    median = _medians({name: image(name) for name in settings}, repeats, device, warm_up=["few-step (4 euler)"])
    params = model.params
    print(f"Per image: NewBie widths (ffn {params.ffn_dim}), {params.n_layers} layers + 2+2 refiners, "
          f"{size}x{size}, median of {repeats}:")
    for name, seconds in median.items():
        print(f"  {name:20s} {seconds:8.2f} s/image  {seconds / median['official']:6.3f}x official  "
              f"({reports[name].describe()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="per step: joint layers (NewBie has 36)")
    parser.add_argument("--size", type=int, default=256, help="per step: image side in pixels")
    parser.add_argument("--image-layers", type=int, default=6, help="per image: joint layers")
    parser.add_argument("--image-ffn", type=int, default=2304, help="per image: feed-forward width (NewBie: 9216)")
    parser.add_argument("--image-size", type=int, default=128, help="per image: image side in pixels")
    parser.add_argument("--cache", type=float, default=0.05, help="per image: step cache threshold")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"300-token positive, 40-token negative, random weights, {args.dtype} on {device}")
    model = _model(args.layers, 9216, device, dtype)
    g = torch.Generator().manual_seed(0)
    positive, negative = random_conditioning(300, model.params, g), random_conditioning(40, model.params, g)
    per_step(model, positive, negative, args.size, args.repeats, device)
    del model
    model = _model(args.image_layers, args.image_ffn, device, dtype)
    per_image(model, positive, negative, args.image_size, args.cache, args.repeats, device)


if __name__ == "__main__":
    main()
