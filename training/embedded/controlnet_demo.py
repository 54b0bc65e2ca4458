"""A ControlNet for the embedded model whose control image is an outline drawing of the scene:
where the objects are and what shape, no colour (``render_outline``).

Data (``write_dataset``): rendered training scenes (no held-out shape–colour–cell combination),
each ``images/NNNNN.png`` with its outline drawing ``images/NNNNN.control.png`` (train-controlnet's
naming rule) and a caption in a ``metadata.jsonl``. So that the network learns to take geometry
from the drawing and colour from the caption, the captions come in three kinds: the full caption
(``CAPTION_SHARES``), the caption with every position left out, and the caption with positions that
contradict the drawing (the objects' cells permuted among cells of the grid).

Evaluation (``check-embedded --controlnet``): held-out scenes (every object a combination training
never showed) drawn as outlines; the model samples with the drawing as control image and the
full caption, the caption without positions, and a caption whose positions contradict the
drawing. Geometry counts an object right when the checker finds it in the drawn cell with the
drawn shape; colour when it has the caption's colour there.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .shapes import (ALL_SIZE_FRACTIONS, BACKGROUND_TAGS, COUNT_WORDS, Scene, _appearance, _field,
                     _on_background, held_out, plain_caption, random_scene, render, xml_caption)

# Shares of the three caption kinds: true positions, positions withheld, positions contradicting.
CAPTION_SHARES = (0.5, 0.25, 0.25)
OUTLINE_WIDTH = 1.5       # line width in pixels at 64×64
CONTROLNET_FILE = "controlnet/NextDiT-embedded-shapes-outline.safetensors"


def render_outline(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """White outlines of the scene's objects on black, uint8 RGB [size, size, 3]: positions, shapes
    and sizes, no colours, no background."""
    big = size * supersample
    image = Image.new("RGB", (big, big), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    cell, width = big / 3, round(OUTLINE_WIDTH * supersample)
    for obj in scene.objects:
        cx, cy = (obj.column + 0.5) * cell, (obj.row + 0.5) * cell
        half = ALL_SIZE_FRACTIONS[obj.size] * cell / 2
        box = (cx - half, cy - half, cx + half, cy + half)
        if obj.shape == "circle":
            draw.ellipse(box, outline=(255, 255, 255), width=width)
        elif obj.shape == "square":
            draw.rectangle(box, outline=(255, 255, 255), width=width)
        else:
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)],
                         outline=(255, 255, 255), width=width)
    return np.asarray(image.resize((size, size), Image.LANCZOS))


def caption_without_positions(scene: Scene, plain: bool = False) -> str:
    """The caption with every object's position left out (XML without ``<position>``, or plain)."""
    if plain:
        parts = [f"a {o.size} {o.colour} {o.shape}" for o in scene.objects]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return listed + _on_background(scene.background)
    blocks = [f"<character_{i}>\n" + _field("n", o.shape) + _field("appearance", _appearance(o.colour, o.size))
              + f"</character_{i}>" for i, o in enumerate(scene.objects, start=1)]
    blocks.append("<general_tags>\n" + _field("count", COUNT_WORDS[len(scene.objects)])
                  + _field("background", BACKGROUND_TAGS[scene.background]) + "</general_tags>")
    return "\n\n".join(blocks)


def contradicting(scene: Scene, rng: random.Random) -> Scene:
    """The scene with every object moved to another cell (distinct cells), as a caption would
    misplace them."""
    cells = {o.row * 3 + o.column for o in scene.objects}
    while True:
        moved = rng.sample(range(9), len(scene.objects))
        if all(new != o.row * 3 + o.column for new, o in zip(moved, scene.objects)) and set(moved) != cells:
            break
    return Scene(tuple(replace(o, row=cell // 3, column=cell % 3) for o, cell in zip(scene.objects, moved)),
                 scene.background)


def training_caption(scene: Scene, rng: random.Random, plain_share: float = 0.3,
                     shares: tuple[float, float, float] = CAPTION_SHARES) -> str:
    """A caption of ``scene``: full, positions withheld or positions contradicting, drawn with
    ``shares``; plain English rather than XML for ``plain_share`` of them."""
    plain = rng.random() < plain_share
    kind = rng.random()
    if kind < shares[0]:
        return plain_caption(scene) if plain else xml_caption(scene)
    if kind < shares[0] + shares[1]:
        return caption_without_positions(scene, plain)
    wrong = contradicting(scene, rng)
    return plain_caption(wrong) if plain else xml_caption(wrong)


def write_dataset(folder: str | Path, count: int, seed: int = 0,
                  shares: tuple[float, float, float] = CAPTION_SHARES) -> Path:
    """``count`` training scenes: images, outline drawings and a metadata.jsonl (module docstring)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        scene = random_scene(rng, allowed=lambda obj: not held_out(obj))
        name = f"images/{index:05d}"
        Image.fromarray(render(scene)).save(folder / f"{name}.png")
        Image.fromarray(render_outline(scene)).save(folder / f"{name}.control.png")
        lines.append(json.dumps({"image": f"{name}.png", "text": training_caption(scene, rng, shares=shares)}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def evaluation_cases(scenes: list[Scene], seed: int = 99) -> dict[str, list[str]]:
    """The three captions of each held-out scene: full, positions withheld, positions contradicting."""
    rng = random.Random(seed)
    return {"full caption": [xml_caption(s) for s in scenes],
            "positions withheld": [caption_without_positions(s) for s in scenes],
            "positions contradicting the drawing": [xml_caption(contradicting(s, rng)) for s in scenes]}


def control_conditioning(models, text: str, handle):
    """The embedded models' CONDITIONING of ``text`` carrying ``handle`` (as core's Apply ControlNet
    leaves it), or plain when ``handle`` is None."""
    cond = models.conditioning(text)
    if handle is None:
        return cond
    return [[feats, {**extras, "control": handle}] for feats, extras in cond]


def controlled_adherence(models, net, scenes: list[Scene], captions: list[str], strength: float | None,
                         steps: int = 25, cfg: float = 4.0) -> tuple[dict[str, float], list[np.ndarray]]:
    """The checker's figures for ``scenes`` sampled from ``captions`` with each scene's outline drawing
    as control image at ``strength`` (None: no ControlNet), teacher at ``cfg``; and the images."""
    import torch

    from ...controlnet.handle import ControlNetHandle
    from ...sampling.sample import sample
    from .adherence import score_image, summarise
    from .evaluate import EVALUATION

    settings = replace(EVALUATION, steps=steps, cfg=cfg)
    scores, images = [], []
    for index, (scene, text) in enumerate(zip(scenes, captions)):
        handle = None
        if strength is not None:
            drawing = torch.from_numpy(np.array(render_outline(scene))).float()[None].movedim(-1, 1) / 255
            handle = ControlNetHandle(net).copy().set_cond_hint(drawing, strength, (0.0, 1.0), vae=models.vae)
        latent = sample(models.teacher, control_conditioning(models, text, handle),
                        control_conditioning(models, "", handle), settings, width=64, height=64, seed=index)
        image = (models.vae.decode(latent["samples"])[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        images.append(image)
        scores.append(score_image(image, scene))
    return summarise(scores), images
