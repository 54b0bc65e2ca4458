"""``python -m nextdit_nodes check-embedded``: adherence of the embedded model on held-out prompts."""

from __future__ import annotations

from dataclasses import replace
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
    parser.add_argument("--lora", type=Path, default=None,
                        help="instead: the teacher (CFG 4) with and without this LoRA, on the base held-out "
                             "prompts (old concepts) and on held-out prompts of the size it teaches (tiny)")
    parser.add_argument("--lora-strength", type=float, default=1.0)
    parser.add_argument("--dit", type=Path, action="append", default=[], metavar="FILE",
                        help="instead: the teacher (CFG 4) next to this file in its place, e.g. the "
                             "teacher quantised by `quantize` (a GGUF); repeatable")
    parser.add_argument("--controlnet", type=Path, default=None,
                        help="instead: the teacher (CFG 4) with this outline ControlNet on held-out scenes drawn "
                             "as outlines, with the full caption, positions withheld and positions contradicting "
                             "the drawing; and without it / at strength 0")
    parser.add_argument("--controlnet-strength", type=float, default=1.0)
    parser.add_argument("--nag", action="store_true",
                        help="instead: Normalized Attention Guidance (the empty negative) on the teacher at CFG 1 "
                             "and on the students, next to the rows without it")
    parser.add_argument("--weights", action="store_true",
                        help="instead: prompt weights on the last object's <character_N> block of held-out "
                             "scenes (teacher, CFG 4): that object's presence and the others' figures per weight")
    parser.add_argument("--tiny-decoder", type=Path, default=None, metavar="FILE",
                        help="instead: images decoded by the full autoencoder and by this tiny decoder (made by "
                             "distill-decoder) from the same latents, and each decoder's time per image")
    parser.add_argument("--compact", type=Path, action="append", default=[], metavar="FILE",
                        help="instead: the teacher and each compact student (made by `distill --layers`) at their "
                             "own recorded settings (the teacher's: CFG 4, 25 Euler steps); repeatable")
    parser.set_defaults(func=run)


def _row(name: str, scores: dict[str, float]) -> str:
    return (f"| {name} | {scores['colour_position_per_object']:.1f} | {scores['colour_position_per_image']:.1f} "
            f"| {scores['size_per_object']:.1f} | {scores['shape_per_object']:.1f} "
            f"| {scores['all_right_per_image']:.1f} |")


def _header() -> None:
    print("| images (held-out prompts) | colour+position / object | colour+position / image "
          "| size / object | shape / object | all right / image |")
    print("| --- | --- | --- | --- | --- | --- |")


def _through_vae(vae, scenes) -> list:
    import numpy as np
    import torch

    from ..training.embedded.shapes import render

    pixels = torch.from_numpy(np.stack([render(scene) for scene in scenes])).float() / 255
    return list((vae.decode(vae.encode(pixels)) * 255).round().byte().numpy())


def describe_lora(path: Path) -> str:
    """What the LoRA's metadata says it was trained for and how (train-lora records it), so the table
    below is read against the right concept: the table scores the embedded demo's concept."""
    import json

    from ..files.tensors import read_metadata

    metadata = read_metadata(path)
    settings = json.loads(metadata.get("training_settings") or "{}")
    if not metadata:
        return f"LoRA {path.name}: its file records nothing about its training"
    parts = [f"base {metadata.get('base_model', '?')}", f"rank {metadata.get('lora_rank', '?')}"]
    if settings:
        parts.append(f"{settings.get('steps', '?')} steps of {settings.get('global_batch', '?')} over "
                     f"{settings.get('images', '?')} images at {settings.get('resolution', '?')} px, "
                     f"system prompt {settings.get('system_prompt', '?')}")
        if settings.get("prior_images"):
            per_batch = settings.get("prior_batch") or settings.get("batch_size", "?")
            parts.append(f"{settings['prior_images']} prior images, {per_batch} a micro-batch at weight "
                         f"{settings.get('prior_weight', '?')}")
    return (f"LoRA {path.name} (trained by {metadata.get('trainer', 'an unknown trainer')}): {', '.join(parts)}; "
            f"the table scores the embedded demo's new concept, the size 'tiny'")


def run_lora(args) -> int:
    from ..training.embedded.adherence import score_image, summarise
    from ..training.embedded.evaluate import SETTINGS, EmbeddedModels, adherence
    from ..training.embedded.lora_demo import CONCEPT, held_out_concept_scenes, tokens, word_separation
    from ..training.embedded.shapes import held_out_scenes, render

    models = EmbeddedModels(args.models_dir)
    print(describe_lora(args.lora))
    print(f"Gemma pieces of '{CONCEPT}': {tokens(models.text, CONCEPT)}")
    print("cosine similarities of one-object captions differing only in the size word: "
          + ", ".join(f"{k} {v:.3f}" for k, v in word_separation(models.text).items()))
    teacher = next(s for s in SETTINGS if s.model == "teacher" and s.sampler.cfg == 4.0)
    patched = models.with_lora(args.lora, args.lora_strength)
    concept = held_out_concept_scenes(args.count)
    base = held_out_scenes(args.count)
    _header()
    print(_row(f"{CONCEPT}: rendered from the captions (checker check)",
               summarise([score_image(render(s), s) for s in concept])))
    print(_row(f"{CONCEPT}: autoencoder reconstructions (shipped VAE; what any Next-DiT can reach)",
               summarise([score_image(image, s) for image, s in zip(_through_vae(models.vae, concept), concept)])))
    for label, scenes in ((f"new concept ({CONCEPT})", concept), ("old concepts", base)):
        for name, which in (("without the LoRA", models), (f"LoRA strength {args.lora_strength:g}", patched)):
            print(_row(f"{label}, teacher CFG 4, {name}",
                       adherence(which, teacher, steps=args.steps, scenes=scenes)), flush=True)
    return 0


def run_dit(args) -> int:
    """The embedded teacher and each --dit file in its place, at CFG 4 (the teacher's setting)."""
    import copy

    from ..dit.checkpoint import load_dit
    from ..training.embedded.evaluate import SETTINGS, EmbeddedModels, adherence

    models = EmbeddedModels(args.models_dir)
    variants = [("teacher", models)]
    for path in args.dit:
        replaced = copy.copy(models)
        replaced.teacher = load_dit(path, dtype="fp32")
        variants.append((path.name, replaced))
    _header()
    setting = next(s for s in SETTINGS if s.model == "teacher" and s.sampler.cfg == 4.0)
    for name, which in variants:
        label = setting.name if which is models else setting.name.replace("teacher", name, 1)
        print(_row(label, adherence(which, setting, args.count, args.steps)), flush=True)
    return 0


def run_compact(args) -> int:
    """The teacher and each --compact student in its place, every model at its own settings."""
    import copy

    from ..dit.checkpoint import load_dit
    from ..dit.own_settings import own_settings
    from ..files.tensors import read_metadata
    from ..training.embedded.evaluate import EVALUATION, EmbeddedModels, Setting, adherence

    models = EmbeddedModels(args.models_dir)
    _header()
    own = Setting("", "teacher", replace(EVALUATION, steps=0))
    print(_row(f"teacher ({own_settings(models.teacher).describe()})", adherence(models, own, args.count)), flush=True)
    for path in args.compact:
        replaced = copy.copy(models)
        replaced.teacher = load_dit(path, dtype="fp32")
        metadata = read_metadata(path)
        name = (f"{path.name}: {replaced.teacher.params.n_layers} of {metadata.get('parent_layers', '?')} joint "
                f"layers ({metadata.get('kept_layers', '?')}), feature weight {metadata.get('feature_weight', '?')}")
        print(_row(name, adherence(replaced, own, args.count)), flush=True)
    return 0


def run_controlnet(args) -> int:
    import numpy as np

    from ..controlnet.files import load_controlnet
    from ..training.embedded.adherence import score_image, summarise
    from ..training.embedded.controlnet_demo import controlled_adherence, evaluation_cases, render_outline
    from ..training.embedded.evaluate import EmbeddedModels
    from ..training.embedded.shapes import held_out_scenes, render

    models = EmbeddedModels(args.models_dir)
    net = load_controlnet(args.controlnet)
    scenes = held_out_scenes(args.count)
    cases = evaluation_cases(scenes)
    print("Geometry (the drawn shape in the drawn cell) is the shape / object column; colour is "
          "colour+position / object (the caption's colour in the drawn cell).")
    _header()
    print(_row("rendered from the captions (checker check)", summarise([score_image(render(s), s) for s in scenes])))
    print(_row("the outline drawings themselves (no colour: checker finds no object colour)",
               summarise([score_image(render_outline(s), s) for s in scenes])))
    plain, plain_images = controlled_adherence(models, net, scenes, cases["full caption"], None, args.steps)
    print(_row("full caption, no ControlNet", plain), flush=True)
    zero, zero_images = controlled_adherence(models, net, scenes, cases["full caption"], 0.0, args.steps)
    same = all(np.array_equal(a, b) for a, b in zip(plain_images, zero_images))
    print(_row(f"full caption, ControlNet strength 0 (images identical to no ControlNet: {same})", zero), flush=True)
    for name, captions in cases.items():
        if name != "full caption":
            print(_row(f"{name}, no ControlNet", controlled_adherence(models, net, scenes, captions, None,
                                                                     args.steps)[0]), flush=True)
        print(_row(f"{name}, ControlNet strength {args.controlnet_strength:g}",
                   controlled_adherence(models, net, scenes, captions, args.controlnet_strength, args.steps)[0]),
              flush=True)
    return 0


def run_nag(args) -> int:
    from ..training.embedded.evaluate import NAG_ROWS, SETTINGS, EmbeddedModels, adherence, with_nag_on

    models = EmbeddedModels(args.models_dir)
    _header()
    shown = set()
    for index, scale, tau, alpha, start, end in NAG_ROWS:
        setting = SETTINGS[index]
        if getattr(models, setting.model.replace("-", "_")) is None:
            continue
        if index not in shown:
            shown.add(index)
            if index == 0:
                print(_row(SETTINGS[1].name, adherence(models, SETTINGS[1], args.count, args.steps)), flush=True)
            print(_row(setting.name, adherence(models, setting, args.count, args.steps)), flush=True)
        nag = with_nag_on(models, setting, scale, tau, alpha, start, end)
        window = "" if (start, end) == (0.0, 1.0) else f", {start:g}-{end:g} of the sampling"
        print(_row(f"{setting.name} + NAG scale {scale:g}, tau {tau:g}, alpha {alpha:g}{window}",
                   adherence(nag, setting, args.count, args.steps)), flush=True)
    return 0


def run_weights(args) -> int:
    from ..training.embedded.evaluate import EmbeddedModels, weight_presence

    models = EmbeddedModels(args.models_dir)
    results = weight_presence(models, count=args.count // 2, steps=args.steps)
    identical = results.pop("weight 1 bit-identical", None)
    print("| weight of the last object's block | that object drawn | other objects: colour+position / object "
          "| colour+position / image | size / object | shape / object | all right / image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for weight, scores in results.items():
        print(_row(f"{weight if isinstance(weight, str) else f'{weight:g}'} | {scores['present']:.1f} %", scores))
    if identical is not None:
        print(f"weight 1 gives the latents of the caption without syntax bit for bit: {identical}")
    return 0


def run_tiny_decoder(args) -> int:
    from ..training.embedded.evaluate import EmbeddedModels
    from ..training.embedded.evaluate import decoder_comparison
    from ..vae.loading import load_vae

    models = EmbeddedModels(args.models_dir)
    rows, seconds = decoder_comparison(models, load_vae(args.tiny_decoder, dtype="fp32"), args.count, args.steps)
    _header()
    for name, scores in rows.items():
        print(_row(name, scores))
    print(f"\ndecode time per 64×64 image, side by side: full {seconds['full'] * 1e3:.1f} ms, tiny "
          f"{seconds['tiny'] * 1e3:.1f} ms ({seconds['tiny'] / seconds['full']:.2f}× the full decoder's)")
    return 0


def run(args) -> int:
    if args.tiny_decoder is not None:
        return run_tiny_decoder(args)
    if args.lora is not None:
        return run_lora(args)
    if args.dit:
        return run_dit(args)
    if args.compact:
        return run_compact(args)
    if args.controlnet is not None:
        return run_controlnet(args)
    if args.nag:
        return run_nag(args)
    if args.weights:
        return run_weights(args)
    import torch

    from ..training.embedded.adherence import score_image, summarise
    from ..dit.checkpoint import load_dit
    from ..dit.own_settings import own_settings
    from ..training.embedded.evaluate import (CACHE_THRESHOLDS, EVALUATION, SETTINGS, EmbeddedModels, Setting,
                                              adherence, inpaint_adherence)
    from ..training.embedded.pipeline import reconstruction_adherence
    from ..training.embedded.shapes import held_out_scenes, render

    scenes = held_out_scenes(args.count)
    images = [render(scene) for scene in scenes]
    _header()
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
        own = Setting(name, "few-step", replace(EVALUATION, steps=0))
        print(_row(name, adherence(models, own, args.count)), flush=True)
    if not args.no_cache_table:
        print(f"\nStep cache (teacher, CFG 4, {args.steps} Euler steps): share of evaluations whose joint layers "
              f"after the first were skipped")
        print("| threshold | evaluations skipped | colour+position / object | colour+position / image "
              "| size / object | shape / object | all right / image |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for threshold in CACHE_THRESHOLDS:
            cached = Setting("", "teacher", replace(EVALUATION, cfg=4.0, step_cache=threshold))
            scores = adherence(models, cached, args.count, args.steps)
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
