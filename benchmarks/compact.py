"""A compact student's cost against its teacher's, measured side by side in one run.

1. The embedded teacher (6 joint layers) and a half-depth student (3): one model evaluation (CFG's
   prompt + negative packed, 64×64) and one whole image (NewBie-style sampling at the teacher's
   own settings, 25 Euler steps at CFG 4, without the decode).
2. NewBie widths (dim 2304, 24/8 heads, ffn 9216, cap 2560, clip 1024; random weights, the
   official 2 + 2 refiner blocks) with ``--layers`` joint layers against a student with half of
   them: one evaluation of a cond + uncond pair (300 and 40 caption tokens) at ``--resolution``,
   and one decode of that resolution's latent by FLUX.1's decoder widths and by TAEF1's tiny
   decoder (random weights, through the pack's loader, as ``tiny_decoder.py`` builds them); all
   four calls in one interleaved loop.
   The per-image cost is then composed from these measured parts, not timed whole:
   ``--steps`` × evaluation + one decode, for teacher + full decoder (1.00), teacher + tiny,
   student + full and student + tiny. The same ratios at NewBie's 36 joint layers are estimated by
   scaling the joint layers alone: the teacher and student differ by L − L//2 identical joint
   layers, so one joint layer costs (teacher − student) / (L − L//2), and the rest of the
   evaluation (embedders, refiners, final layer) is the teacher's time less L of them.

Repeats are interleaved and the medians compared, so the ratios hold on a busy machine; the
absolute times only mean something on a quiet one.

    python benchmarks/compact.py [--student FILE] [--layers 8] [--resolution 256] [--steps 28] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from timing import random_conditioning, timed
from tiny_decoder import flux_decoders
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
def newbie_width(layers: int, resolution: int, steps: int, repeats: int) -> None:
    params = NextDiTParams(dim=2304, n_layers=layers, n_heads=24, n_kv_heads=8, ffn_dim=9216, cap_dim=2560,
                           clip_dim=1024)
    teacher = NextDiT(params).eval()
    kept = layers // 2
    student = make_compact(teacher, evenly_spaced(layers, kept), clone=False).eval()
    gen = torch.Generator().manual_seed(0)
    args = _pair(params, resolution, gen)
    latent = torch.randn(1, params.in_channels, resolution // 8, resolution // 8, generator=gen)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as scratch:
        flux, taef1 = flux_decoders(Path(scratch), device)
        medians = side_by_side({"teacher": lambda: teacher(*args), "student": lambda: student(*args),
                                "full": lambda: flux.decode(latent), "tiny": lambda: taef1.decode(latent)},
                               repeats, device)
    _report(f"NewBie widths, one evaluation ({resolution}x{resolution}, 300 + 40 caption tokens)",
            {f"teacher ({layers} layers)": medians["teacher"], f"student ({kept} layers)": medians["student"]})
    _report(f"one decode ({resolution}x{resolution})",
            {"FLUX.1 decoder widths": medians["full"], "TAEF1": medians["tiny"]})
    print(f"\nPer image, composed from the parts above (not timed whole): {steps} x one CFG-pair evaluation"
          " + one decode")
    _per_image_table(f"{layers} joint layers (measured)", medians["teacher"], medians["student"], medians, steps)
    layer = (medians["teacher"] - medians["student"]) / (layers - kept)
    rest = medians["teacher"] - layers * layer
    print(f"\nOne joint layer: (teacher - student) / {layers - kept} = {layer * 1000:.1f} ms; the rest of an"
          f" evaluation (embedders, 2 + 2 refiners, final layer): teacher - {layers} joint layers ="
          f" {rest * 1000:.1f} ms")
    if rest <= 0:
        print("The rest came out at or below zero: the two medians are too noisy for the 36-layer estimate.")
        return
    _per_image_table("36 joint layers (estimated: the rest + 36 or 18 joint layers)", rest + 36 * layer,
                     rest + 18 * layer, medians, steps)


def _per_image_table(title: str, teacher: float, student: float, medians: dict[str, float], steps: int) -> None:
    """Per-image seconds of the four combinations and their ratios to teacher + full decoder."""
    cost = {(model, decoder): steps * evaluation + medians[decoder]
            for model, evaluation in (("teacher", teacher), ("student", student)) for decoder in ("full", "tiny")}
    base = cost["teacher", "full"]
    print(f"\n{title}\n| per image | seconds | ratio |\n| --- | --- | --- |")
    for (model, decoder), seconds in cost.items():
        name = f"{model} + {'FLUX.1-width decoder' if decoder == 'full' else 'TAEF1'}"
        print(f"| {name} | {seconds:.2f} | {seconds / base:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=EMBEDDED_DIR / COMPACT_FILE,
                        help="the embedded compact student (default: the shipped one; absent: its shapes)")
    parser.add_argument("--layers", type=int, default=8, help="joint layers of the NewBie-width teacher")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=28,
                        help="CFG-pair evaluations per image in the composed per-image cost (default 28; the "
                             "official 17 midpoint steps are 34)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-newbie", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()
    if not args.skip_embedded:
        embedded(args.student, args.repeats)
    if not args.skip_newbie:
        newbie_width(args.layers, args.resolution, args.steps, args.repeats)


if __name__ == "__main__":
    main()
