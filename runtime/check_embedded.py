"""``python -m nextdit_nodes check-embedded``: adherence of the embedded model on held-out prompts."""

from __future__ import annotations

from pathlib import Path

from ..nodes.host import EMBEDDED_DIR


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-embedded", help="score the embedded model's adherence on held-out prompts",
        description="Generate images for held-out shape-colour-position prompts and score each "
                    "requested object's colour+position, size and shape. The checker is first "
                    "validated on images rendered from the captions and on shuffled captions.")
    parser.add_argument("--models-dir", type=Path, default=EMBEDDED_DIR)
    parser.add_argument("--count", type=int, default=200, help="held-out prompts per setting")
    parser.add_argument("--steps", type=int, default=25, help="Euler steps")
    parser.add_argument("--few-step", type=Path, action="append", default=[], metavar="FILE",
                        help="also score this few-step student (made by `distill --steps`) at its own settings; "
                             "repeatable")
    parser.add_argument("--no-cache-table", action="store_true", help="leave out the step cache table")
    parser.set_defaults(func=run)


def _row(name: str, scores: dict[str, float]) -> str:
    return (f"| {name} | {scores['colour_position_per_object']:.1f} | {scores['colour_position_per_image']:.1f} "
            f"| {scores['size_per_object']:.1f} | {scores['shape_per_object']:.1f} "
            f"| {scores['all_right_per_image']:.1f} |")


def run(args) -> int:
    import torch

    from ..training.embedded.adherence import score_image, summarise
    from ..dit.checkpoint import load_dit
    from ..dit.own_settings import own_settings
    from ..training.embedded.evaluate import (CACHE_THRESHOLDS, SETTINGS, EmbeddedModels, Setting, adherence,
                                              inpaint_adherence)
    from ..training.embedded.pipeline import reconstruction_adherence
    from ..training.embedded.shapes import held_out_scenes, render

    scenes = held_out_scenes(args.count)
    images = [render(scene) for scene in scenes]
    print("| images (held-out prompts) | colour+position / object | colour+position / image "
          "| size / object | shape / object | all right / image |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(_row("rendered from the captions (checker check)",
               summarise([score_image(i, s) for i, s in zip(images, scenes)])))
    print(_row("rendered, captions shuffled (chance)",
               summarise([score_image(i, s) for i, s in zip(images, scenes[1:] + scenes[:1])])))
    models = EmbeddedModels(args.models_dir)

    def through_shipped_vae(pixels):
        rebuilt = models.vae.decode(models.vae.encode(torch.from_numpy(pixels).float() / 255))
        return (rebuilt * 255).round().byte().numpy()

    reconstructed = reconstruction_adherence(through_shipped_vae, args.count)
    print(_row("autoencoder reconstructions (shipped VAE)", reconstructed), flush=True)
    for setting in SETTINGS:
        if getattr(models, setting.model.replace("-", "_")) is None:
            continue
        print(_row(setting.name, adherence(models, setting, args.count, args.steps)), flush=True)
    for path in args.few_step:
        models.few_step = load_dit(path, dtype="fp32")
        name = f"{path.name} (its own settings: {own_settings(models.few_step).describe()})"
        print(_row(name, adherence(models, Setting(name, "few-step", 1.0, 0.0, steps=0), args.count)), flush=True)
    if not args.no_cache_table:
        print(f"\nStep cache (teacher, CFG 4, {args.steps} Euler steps): share of evaluations whose joint layers "
              f"after the first were skipped")
        print("| threshold | evaluations skipped | colour+position / object | colour+position / image "
              "| size / object | shape / object | all right / image |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for threshold in CACHE_THRESHOLDS:
            scores = adherence(models, Setting("", "teacher", 4.0, 0.0, step_cache=threshold), args.count, args.steps)
            label = "0 (no cache)" if threshold == 0 else f"{threshold:g}"
            print(_row(f"{label} | {scores.get('skipped', 0.0):.1f} %", scores), flush=True)
    print("\nInpainting (teacher, CFG 4): held-out scenes of two or three objects without their last "
          "object, that object's cell masked, the whole scene's caption")
    print("| objects scored | colour+position / object | colour+position / image | size / object "
          "| shape / object | all right / image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, scores in inpaint_adherence(models, args.count // 2, args.steps).items():
        print(_row(name, scores), flush=True)
    return 0
