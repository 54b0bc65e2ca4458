"""Tiled against untiled VAE decoding: peak memory and seconds, full-size random FLUX VAE weights.

    python benchmarks/vae.py                      # 1024² and 2048², CPU (slow: minutes per case)
    python benchmarks/vae.py --sizes 256 512      # quick look
    python benchmarks/vae.py --device cuda

Every case runs in its own subprocess so its peak memory is its own: on the CPU the peak resident
set (VmHWM, reset after loading, so only the decode counts), on CUDA torch's peak allocation. The
weights are random (FLUX.1 shapes: 128/256/512/512 channels, 16 latent channels, ~84 M parameters)
and go through the pack's loader and NextDiTVAE.decode like a real file. The untiled case is
skipped where the loader's own memory estimate is over ``--max-memory-share`` of the free memory.
Ratios are measured side by side in one run; absolute seconds mean something only on a GPU.

Results: the README's Benchmarks section.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLUX_CONFIG = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                   down_block_types=["DownEncoderBlock2D"] * 4,
                   up_block_types=["UpDecoderBlock2D"] * 4,
                   use_quant_conv=False, use_post_quant_conv=False)


def _write_random_vae(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(**FLUX_CONFIG)
    params = sum(p.numel() for p in model.parameters())
    print(f"random FLUX VAE: {params / 1e6:.1f} M parameters", flush=True)
    model.save_pretrained(str(folder))


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(folder: str, size: int, mode: str, device: str, tile: int, overlap: int) -> None:
    import torch

    from nextdit_nodes.vae.loading import load_vae

    vae = load_vae(folder, device=device)
    latent = torch.randn(1, 16, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as clear:  # reset VmHWM to the current RSS
            clear.write("5")
        base = _vm_kib("VmRSS") * 1024
    start = time.perf_counter()
    image = vae.decode(latent, tiled=mode, tile=tile, overlap=overlap)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _vm_kib("VmHWM") * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "base": base,
                      "shape": list(image.shape)}))


def _would_fit(folder: Path, size: int, device: str, share: float) -> tuple[bool, float, float]:
    """(fits, estimated GiB, free GiB): the loader's estimate against ``share`` of free memory."""
    import torch

    from nextdit_nodes.vae.loading import load_vae
    from nextdit_nodes.vae.tiled import free_memory_bytes

    vae = load_vae(folder, device=device)
    estimate = size * size * vae.info.decode_elements_per_pixel * vae.dtype.itemsize
    free = free_memory_bytes(torch.device(device))
    return estimate <= share * free, estimate / 2**30, free / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=64, help="latent pixels")
    parser.add_argument("--overlap", type=int, default=16, help="latent pixels")
    parser.add_argument("--max-memory-share", type=float, default=0.5,
                        help="run the untiled case only if its estimate is under this share of "
                             "the free memory (a shared machine's other users need the rest)")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, size, mode = args.child
        _child(folder, int(size), mode, args.device, args.tile, args.overlap)
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vae"
        _write_random_vae(folder)
        for size in args.sizes:
            for mode in ("off", "on"):
                if mode == "off":
                    fits, estimate, free = _would_fit(folder, size, args.device,
                                                      args.max_memory_share)
                    if not fits:
                        print(f"{size}² untiled: skipped (estimated {estimate:.1f} GiB, "
                              f"{free:.1f} GiB free)", flush=True)
                        rows.append((size, mode, None))
                        continue
                command = [sys.executable, __file__, "--child", str(folder), str(size), mode,
                           "--device", args.device, "--tile", str(args.tile),
                           "--overlap", str(args.overlap)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{size}² {mode}: failed\n{done.stderr[-2000:]}", flush=True)
                    rows.append((size, mode, None))
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{size}² tiled={mode}: {result['seconds']:.1f} s, peak "
                      f"{(result['peak'] - result['base']) / 2**20:.0f} MiB over the loaded state",
                      flush=True)
                rows.append((size, mode, result))
    _print_table(rows, args)


def _print_table(rows, args) -> None:
    print(f"\nVAE decode, random full-size FLUX VAE, device={args.device}, tile={args.tile}, "
          f"overlap={args.overlap} (latent px); memory = peak during decode minus before it")
    print(f"{'size':>6} {'tiled':>6} {'seconds':>9} {'peak MiB':>9} {'time ratio':>11} {'mem ratio':>10}")
    untiled = {size: result for size, mode, result in rows if mode == "off"}
    for size, mode, result in rows:
        if result is None:
            print(f"{size:>6} {mode:>6} {'skipped':>9}")
            continue
        memory = (result["peak"] - result["base"]) / 2**20
        base = untiled.get(size)
        time_ratio = mem_ratio = ""
        if mode == "on" and base is not None:
            time_ratio = f"{result['seconds'] / base['seconds']:.2f}×"
            mem_ratio = f"{(result['peak'] - result['base']) / (base['peak'] - base['base']):.2f}×"
        print(f"{size:>6} {mode:>6} {result['seconds']:>9.1f} {memory:>9.0f} {time_ratio:>11} "
              f"{mem_ratio:>10}")


if __name__ == "__main__":
    main()
