"""A compact student's cost against its teacher's, measured side by side in one run.

1. The embedded teacher (6 joint layers) and a half-depth student (3): one model evaluation (CFG's
   prompt + negative packed, 64×64) and one whole image (NewBie-style sampling at the teacher's
   own settings, 25 Euler steps at CFG 4, without the decode).
2. NewBie widths (dim 2304, 24/8 heads, ffn 9216, cap 2560, clip 1024; random weights, the
   official 2 + 2 refiner blocks) with ``--layers`` joint layers against a student with half of
   them: one evaluation of a cond + uncond pair (300 and 40 caption tokens) at ``--resolution``.

Repeats are interleaved and the medians compared, so the ratios hold on a busy machine; the
absolute times only mean something on a quiet one.

    python benchmarks/compact.py [--student FILE] [--layers 8] [--resolution 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from timing import random_conditioning, timed
from nextdit_nodes.dit.checkpoint import load_dit
from nextdit_nodes.dit.model import NextDiT
from nextdit_nodes.dit.params import NextDiTParams
from nextdit_nodes.nodes.host import EMBEDDED_DIR
from nextdit_nodes.sampler_settings import SamplerSettings
from nextdit_nodes.sampling.sample import sample
from nextdit_nodes.training.compact import evenly_spaced, make_compact
from nextdit_nodes.training.embedded.pipeline import COMPACT_FILE, DIT_FILE


def side_by_side(calls: dict, repeats: int, device) -> dict[str, float]:
    """Median seconds of each call, repeats interleaved (one warm-up each)."""
    times = {name: [] for name in calls}
    for name, call in calls.items():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timed(call, device))
    return {name: statistics.median(t) for name, t in times.items()}


def _pair(params, resolution: int, gen, lengths=(300, 40)) -> tuple:
    """Forward arguments of a cond + uncond pair, packed as CFG runs it."""
    length = max(lengths)
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    latent = resolution // 8
    return (torch.randn(2, params.in_channels, latent, latent, generator=gen), torch.rand(2, generator=gen),
            torch.randn(2, length, params.cap_dim, generator=gen), mask, torch.randn(2, params.clip_dim, generator=gen))


def _report(title: str, medians: dict[str, float]) -> None:
    (teacher, t_time), (student, s_time) = medians.items()
    print(f"{title}: {teacher} {t_time * 1000:.1f} ms, {student} {s_time * 1000:.1f} ms, ratio {s_time / t_time:.2f}")


@torch.no_grad()
def embedded(student_path: Path | None, repeats: int) -> None:
    teacher = load_dit(EMBEDDED_DIR / DIT_FILE, dtype="fp32")
    if student_path is not None and student_path.exists():
        student = load_dit(student_path, dtype="fp32")
    else:      # the cost depends on the shapes alone
        student = make_compact(teacher, evenly_spaced(teacher.params.n_layers, teacher.params.n_layers // 2))
    k = student.params.n_layers
    gen = torch.Generator().manual_seed(0)
    args = _pair(teacher.params, 64, gen, lengths=(14, 1))
    device = torch.device("cpu")
    _report("embedded, one evaluation (prompt + negative, 64x64)",
            side_by_side({"teacher (6 layers)": lambda: teacher(*args),
                          f"student ({k} layers)": lambda: student(*args)}, repeats * 10, device))
    positive, negative = random_conditioning(14, teacher.params, gen), random_conditioning(1, teacher.params, gen)
    settings = SamplerSettings(25, "euler", 6.0, cfg=4.0)

    def image(model):
        return lambda: sample(model, positive, negative, settings, width=64, height=64, seed=0)

    _report("embedded, one image (25 Euler steps, CFG 4, 64x64, no decode)",
            side_by_side({"teacher": image(teacher), "student": image(student)}, repeats, device))


@torch.no_grad()
def newbie_width(layers: int, resolution: int, repeats: int) -> None:
    params = NextDiTParams(dim=2304, n_layers=layers, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560,
                           clip_dim=1024)
    teacher = NextDiT(params).eval()
    student = make_compact(teacher, evenly_spaced(layers, layers // 2), clone=False).eval()
    args = _pair(params, resolution, torch.Generator().manual_seed(0))
    _report(f"NewBie widths, one evaluation ({resolution}x{resolution}, 300 + 40 caption tokens)",
            side_by_side({f"teacher ({layers} layers)": lambda: teacher(*args),
                          f"student ({layers // 2} layers)": lambda: student(*args)}, repeats, torch.device("cpu")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=EMBEDDED_DIR / COMPACT_FILE,
                        help="the embedded compact student (default: the shipped one; absent: its shapes)")
    parser.add_argument("--layers", type=int, default=8, help="joint layers of the NewBie-width teacher")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-newbie", action="store_true")
    args = parser.parse_args()
    embedded(args.student, args.repeats)
    if not args.skip_newbie:
        newbie_width(args.layers, args.resolution, args.repeats)


if __name__ == "__main__":
    main()
