"""Teaching the embedded model a colour it never saw (pink) with a LoRA made by ``train-lora``.

The base model never saw the word nor the colour: its tokenizers were trained on captions without
it, so "pink" reaches the frozen Gemma as pieces it met only inside other words, and Gemma's
features of those pieces are what the LoRA'd Next-DiT must learn to read (``word_separation``
measures that they differ from every known colour's).

Data: rendered scenes in which each object is pink with probability ``CONCEPT_SHARE`` and
otherwise a base colour (so the old colours keep being shown), no shape–colour–cell combination
that is held out, captioned like the base data (XML, 30 % plain English), written as a
``metadata.jsonl`` dataset. Evaluation: held-out scenes whose every object is pink, in
combinations training never showed (``shapes.held_out`` extended to the new colour), and the base
model's own held-out prompts for the old concepts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from .shapes import (BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, ShapeObject, caption, held_out, random_scene,
                     render, xml_caption)

CONCEPT = "pink"
CONCEPT_SHARE = 0.4           # chance that an object of a training scene has the new colour
LORA_FILE = "loras/NextDiT-embedded-shapes-pink.safetensors"


def concept_scene(rng: random.Random, colour: str = CONCEPT, share: float = CONCEPT_SHARE) -> Scene:
    """A training scene: each object ``colour`` with probability ``share``, else a base colour;
    held-out combinations excluded."""
    base = list(COLOURS)

    def pick(r: random.Random) -> str:
        return colour if r.random() < share else r.choice(base)

    return random_scene(rng, allowed=lambda obj: not held_out(obj), pick_colour=pick)


def held_out_concept_scenes(count: int, colour: str = CONCEPT, seed: int = 4321) -> list[Scene]:
    """Evaluation scenes: one to three objects, every one ``colour`` in a shape–cell combination
    that training never showed with it."""
    rng = random.Random(seed)
    combos: dict[int, list[str]] = {}
    for shape in SHAPES:
        for cell in range(9):
            if held_out(ShapeObject(shape, colour, SIZES[0], cell // 3, cell % 3)):
                combos.setdefault(cell, []).append(shape)
    scenes = []
    for _ in range(count):
        cells = rng.sample(sorted(combos), rng.randint(1, min(3, len(combos))))
        objects = tuple(ShapeObject(rng.choice(combos[cell]), colour, rng.choice(SIZES), cell // 3, cell % 3)
                        for cell in cells)
        scenes.append(Scene(objects, rng.choice(list(BACKGROUNDS))))
    return scenes


def write_dataset(folder: str | Path, count: int, seed: int = 0) -> Path:
    """``count`` rendered training scenes as ``images/NNNNN.png`` with a ``metadata.jsonl``."""
    from PIL import Image  # noqa: PLC0415

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        scene = concept_scene(rng)
        name = f"images/{index:05d}.png"
        Image.fromarray(render(scene)).save(folder / name)
        lines.append(json.dumps({"image": name, "text": caption(scene, rng)}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@torch.no_grad()
def word_separation(text_encoders, colour: str = CONCEPT) -> dict[str, float]:
    """How the frozen encoders tell ``colour`` from the known colours: for one-object XML captions
    that differ only in the colour, the cosine similarity of their mean Gemma features and of their
    Jina vectors, ``colour`` against its nearest known colour and the known colours among themselves
    (the largest pair)."""
    def features(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        text = xml_caption(Scene((ShapeObject("circle", name, "small", 0, 0),), "white"))
        encoding = text_encoders.encode(text, text)
        return encoding.cap_feats[0].mean(dim=0), encoding.pooled[0]

    known = {name: features(name) for name in COLOURS}
    new = features(colour)

    def cosine(a, b) -> float:
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    names = list(known)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return {
        "gemma_new_vs_nearest_known": max(cosine(new[0], known[n][0]) for n in names),
        "gemma_known_pairs_max": max(cosine(known[a][0], known[b][0]) for a, b in pairs),
        "jina_new_vs_nearest_known": max(cosine(new[1], known[n][1]) for n in names),
        "jina_known_pairs_max": max(cosine(known[a][1], known[b][1]) for a, b in pairs),
    }


def tokens(text_encoders, word: str) -> list[str]:
    """How Gemma's tokenizer splits ``word`` inside a caption's appearance field."""
    import sentencepiece  # noqa: PLC0415

    tokenizer = text_encoders.gemma.tokenizer
    pieces = sentencepiece.SentencePieceProcessor()
    pieces.LoadFromSerializedProto(tokenizer.model_proto)
    return [pieces.id_to_piece(i) for i in tokenizer(f"<appearance>{word}, small</appearance>\n")]
