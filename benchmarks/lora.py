"""Per-step forward cost of a Next-DiT with a rank-32 LoRA on every attention and MLP linear vs the base.

NewBie widths (dim 2304, 24/8 heads, ffn 9216, cap 2560, clip 1024) with a few layers, one
256x256 image (32x32 latent, 256 image tokens) and a 128-token caption. The LoRA is written as
a NewbieLoraTrainer-style PEFT file (qkv, out, w1, w2, w3 of every block, refiners included)
and applied with `load_lora`, i.e. as the node applies it. Base and LoRA forwards are timed
interleaved in one run (medians), so the ratio holds on a noisy machine; absolute times only
mean something on a quiet GPU. The FLOP ratio the LoRA adds in theory is printed alongside.

    python benchmarks/lora.py [--layers 2] [--rank 32] [--repeats 5] [--device cpu] [--dtype fp32] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from nextdit_nodes.lora.apply import load_lora
from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import LORA_TARGETS, NextDiTParams


def write_lora(model: NextDiT, rank: int, folder: Path) -> tuple[Path, float]:
    """A PEFT-layout LoRA on every block's attention and MLP linears; returns (path, extra FLOP ratio)."""
    gen = torch.Generator().manual_seed(0)
    tensors, base_macs, lora_macs = {}, 0, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            base_macs += module.in_features * module.out_features  # per token (blocks dominate)
            if name.endswith(LORA_TARGETS):
                out_f, in_f = module.out_features, module.in_features
                tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) / in_f**0.5
                tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 1e-3
                lora_macs += rank * (in_f + out_f)
    path = folder / "adapter_model.safetensors"
    save_file(tensors, str(path))
    return path, lora_macs / base_macs


def inputs(p: NextDiTParams, latent: int, cap_len: int, device, dtype) -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(
        x=torch.randn(1, p.in_channels, latent, latent, generator=gen).to(device, dtype),
        t=torch.rand(1, generator=gen).to(device),
        cap_feats=torch.randn(1, cap_len, p.cap_dim, generator=gen).to(device, dtype),
        cap_mask=torch.ones(1, cap_len, dtype=torch.bool, device=device),
        clip_pooled=torch.randn(1, p.clip_dim, generator=gen).to(device, dtype),
    )


def timed(model, kwargs, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(**kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--refiners", type=int, default=1)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--caption", type=int, default=128, help="caption tokens")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1 by default: on a shared, oversubscribed machine several "
                         "threads make small matmuls wait on each other and distort the ratio)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    p = NextDiTParams(dim=2304, n_layers=args.layers, n_heads=24, n_kv_heads=8, ffn_dim=9216,
                      cap_dim=2560, clip_dim=1024, n_refiner_layers=args.refiners)
    base = NextDiT(p).to(device, dtype).eval().requires_grad_(False)
    base.compute_dtype = dtype
    with tempfile.TemporaryDirectory() as folder:
        path, flop_ratio = write_lora(base, args.rank, Path(folder))
        patched, report = load_lora(base, path, 1.0)
    lora_bytes = sum(b.numel() * b.element_size() for _, b in patched.named_buffers()
                     if "lora" in _.rsplit(".", 1)[-1])
    base_bytes = sum(t.numel() * t.element_size() for t in base.parameters())
    kwargs = inputs(p, args.size // 8, args.caption, device, dtype)

    for model in (base, patched):   # warm-up
        timed(model, kwargs, device)
    base_times, lora_times = [], []
    for _ in range(args.repeats):
        base_times.append(timed(base, kwargs, device))
        lora_times.append(timed(patched, kwargs, device))
    t_base, t_lora = statistics.median(base_times), statistics.median(lora_times)

    tokens = (args.size // 16) ** 2 + args.caption
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    print(f"device {device}{threads}, {args.dtype}, NewBie widths, {args.layers} layers + "
          f"{args.refiners}+{args.refiners} refiners, {tokens} tokens "
          f"({args.size}x{args.size} + {args.caption} caption)")
    print(f"LoRA rank {args.rank} on {report.n_applied} linears (qkv, out, w1, w2, w3 of every block): "
          f"{lora_bytes / 2**20:.1f} MiB kept vs base weights {base_bytes / 2**20:.0f} MiB")
    print(f"base forward   median {t_base * 1e3:8.1f} ms  ({args.repeats} runs)")
    print(f"LoRA forward   median {t_lora * 1e3:8.1f} ms")
    print(f"ratio LoRA/base: {t_lora / t_base:.3f}   (extra FLOPs in theory: +{100 * flop_ratio:.1f}%)")


if __name__ == "__main__":
    main()
