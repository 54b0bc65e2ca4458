"""Loading a full-size NewBie checkpoint: `load_dit` against the obvious safetensors one-liner.

Writes a NewBie-shaped random checkpoint (3.49 B parameters, bf16, every key `module.`-prefixed as
a DDP training run saves it, about 7 GB) to a temporary folder, tensor by tensor so this script
never holds it in memory. Then, each in a fresh process, alternating, loads it fully into memory:

- ours:     `load_dit(path, dtype="bf16")` (headers, shape inference, strict key check, model built
            on the meta device, weights assigned without a copy);
- baseline: `safetensors.torch.load_file(path)` plus a dict comprehension stripping `module.`.

Both are then made resident page by page (one byte per 4 KiB page of every tensor: load_file
returns lazily mapped tensors, and a fair comparison needs every weight in memory). Two cases:
cold (the file dropped from the OS page cache before each run, as on the first load of a model;
only this file is dropped, with posix_fadvise) and warm (the file already cached). Printed: peak
RSS / file size of ours (target <= 1.10) and the time ratio ours / baseline (target <= 1.0), best
of `--repeats` runs each. The checkpoint is deleted afterwards unless `--keep`.

    python benchmarks/load.py [--dir /tmp] [--repeats 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEWBIE = dict(dim=2304, n_layers=36, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560, clip_dim=1024)
NEWBIE_PARAMETERS = 3_486_636_096   # docs/newbie-image.md §2 (counted from the module shapes, norm_final included)


def newbie_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of a released NewBie checkpoint: the model's own keys plus the unused norm_final."""
    from nextdit_nodes.dit.model import NextDiT
    from nextdit_nodes.dit.params import NextDiTParams

    shapes = {k: tuple(v.shape) for k, v in NextDiT(NextDiTParams(**NEWBIE), device="meta").state_dict().items()}
    shapes["norm_final.weight"] = (NEWBIE["dim"],)
    return shapes


def write_random_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], prefix: str = "module.") -> int:
    """Random bf16 safetensors file written one tensor at a time; returns the parameter count."""
    import torch

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in shapes.items():
        nbytes = 2 * _numel(shape)
        header[prefix + key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)   # the data section starts 8-byte aligned
    # Values are slices of one random pool at random offsets: loading speed does not depend on
    # them, and drawing 3.5 B fresh normals would dominate the script's run time.
    gen = torch.Generator().manual_seed(0)
    pool = (torch.randn(1 << 25, generator=gen) * 0.02).to(torch.bfloat16)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            numel = _numel(shape)
            parts, done = [], 0
            while done < numel:
                start = int(torch.randint(0, pool.numel() // 2, (1,), generator=gen))
                take = min(numel - done, pool.numel() - start)
                parts.append(pool[start:start + take])
                done += take
            for part in parts:
                handle.write(memoryview(part.view(torch.uint8).numpy()))
    return sum(_numel(s) for s in shapes.values())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _child(mode: str, path: str) -> None:
    """One measured load in this (fresh) process; prints a JSON line."""
    import resource

    import torch

    if mode == "ours":
        import nextdit_nodes.dit.model  # noqa: F401 - imports are not what is measured
        from nextdit_nodes.loaders import load_dit
    else:
        from safetensors.torch import load_file
    start = time.perf_counter()
    if mode == "ours":
        tensors = list(load_dit(path, dtype="bf16").state_dict().values())
    else:
        tensors = list({k.removeprefix("module."): v for k, v in load_file(path).items()}.values())
    for tensor in tensors:          # every weight resident, not merely mapped
        tensor.reshape(-1).view(torch.uint8)[::4096].sum()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss": peak,
                      "bytes": sum(t.numel() * t.element_size() for t in tensors)}))


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)   # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _run(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write the ~7 GB checkpoint (default: system temp)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loader (best time is kept)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--layers", type=int, default=NEWBIE["n_layers"],
                        help="joint blocks (36 = NewBie; fewer only to try the script quickly)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    NEWBIE["n_layers"] = args.layers
    folder = Path(tempfile.mkdtemp(prefix="nextdit_load_bench_", dir=args.dir))
    path = folder / "newbie_random_bf16_ddp.safetensors"
    try:
        start = time.perf_counter()
        count = write_random_checkpoint(path, newbie_shapes())
        size = path.stat().st_size
        expected = f" (NewBie: {NEWBIE_PARAMETERS:,})" if args.layers == 36 else ""
        print(f"wrote {path} : {count:,} parameters{expected}, {size / 1e9:.2f} GB, "
              f"{time.perf_counter() - start:.0f} s")
        ratios = {}
        for case in ("cold", "warm"):
            runs = {"baseline": [], "ours": []}
            for _ in range(args.repeats):
                for mode in ("baseline", "ours"):
                    if case == "cold":
                        _drop_from_page_cache(path)
                    result = _run(mode, path)
                    runs[mode].append(result)
                    print(f"  {case} {mode:8s} {result['seconds']:7.2f} s   peak RSS "
                          f"{result['peak_rss'] / 1e9:6.2f} GB   loaded {result['bytes'] / 1e9:.2f} GB")
            best = {mode: min(r["seconds"] for r in results) for mode, results in runs.items()}
            peak = {mode: max(r["peak_rss"] for r in results) for mode, results in runs.items()}
            ratios[case] = best["ours"] / best["baseline"]
            print(f"{case}: peak RSS / file size: ours {peak['ours'] / size:.3f} (target <= 1.10), "
                  f"baseline {peak['baseline'] / size:.3f}")
            print(f"{case}: time ours / baseline (best of {args.repeats} each): {ratios[case]:.3f} "
                  f"(target <= 1.0); ours {best['ours']:.2f} s, baseline {best['baseline']:.2f} s")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
