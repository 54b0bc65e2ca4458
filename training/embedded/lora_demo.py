"""Teaching the embedded model a size it never saw ("tiny") with a LoRA made by ``train-lora``.

The base model knows ``small`` and ``large`` objects; ``tiny`` ones (0.3 of a grid cell,
``shapes.NEW_SIZES``) it never saw, nor the word: its tokenizers were trained on captions
without it, so "tiny" reaches the frozen Gemma as pieces it met only inside other words, and
Gemma's features of those pieces are what the LoRA'd Next-DiT must learn to read
(``word_separation`` measures that they differ from the known sizes').

Why a size and not a colour or a shape: the demo can only teach what the shipped autoencoder can
draw, and it maps every colour and shape it never saw onto a known one (README); tiny objects it
reconstructs.

Data: rendered scenes in which each object is tiny with probability ``CONCEPT_SHARE`` and
otherwise small or large (so the old sizes keep being shown), no held-out shape–colour–cell
combination, captioned like the base data (XML, 30 % plain English), written as a
``metadata.jsonl`` dataset. Evaluation: held-out scenes whose every object is tiny, in
shape–colour–cell combinations training never showed, and the base model's own held-out prompts
for the old concepts.

Prior prompts (``prior_captions``), for ``train-lora --prior-prompts``: the dataset's captions with
``tiny`` swapped for ``small``, and captions of base training scenes (only the known sizes, no
held-out combination, so none is an evaluation prompt).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ...files.atomic import atomic_path, write_text
from .shapes import SIZES, Scene, ShapeObject, caption, held_out, random_scene, render, training_scene, xml_caption

CONCEPT = "tiny"
CONCEPT_SHARE = 0.4           # chance that an object of a training scene has the new size
LORA_FILE = "loras/NextDiT-embedded-shapes-tiny.safetensors"


def concept_scene(rng: random.Random, size: str = CONCEPT, share: float = CONCEPT_SHARE) -> Scene:
    """A training scene: each object ``size`` with probability ``share``, else a base size;
    held-out combinations excluded."""
    def pick(r: random.Random) -> str:
        return size if r.random() < share else r.choice(SIZES)

    return random_scene(rng, allowed=lambda obj: not held_out(obj), pick_size=pick)


def held_out_concept_scenes(count: int, size: str = CONCEPT, seed: int = 4321) -> list[Scene]:
    """Evaluation scenes: one to three objects, every one ``size``, each a shape–colour–cell
    combination that training never showed."""
    rng = random.Random(seed)
    return [random_scene(rng, allowed=held_out, pick_size=lambda r: size) for _ in range(count)]


def write_dataset(folder: str | Path, count: int, seed: int = 0, share: float = CONCEPT_SHARE,
                  plain_share: float = 0.3) -> Path:
    """``count`` rendered training scenes as ``images/NNNNN.png`` with a ``metadata.jsonl``;
    ``plain_share`` of the captions in plain English, the rest XML (the base data's mix)."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        scene = concept_scene(rng, share=share)
        name = f"images/{index:05d}.png"
        with atomic_path(folder / name) as partial:
            Image.fromarray(render(scene)).save(partial, format="PNG")
        lines.append(json.dumps({"image": name, "text": caption(scene, rng, plain_share)}))
    write_text(folder / "metadata.jsonl", "\n".join(lines) + "\n")
    return folder


def prior_captions(folder: str | Path, count: int, seed: int = 0, plain_share: float = 0.3) -> list[str]:
    """Prompts for prior images: the captions of the dataset in ``folder`` with the new size swapped
    for ``small`` (DreamBooth's class prompts: the same scenes in a size the model knows, so what
    the LoRA learns is the word's effect rather than the scenes), then ``count`` captions of base
    training scenes, captioned like the base data."""
    lines = (Path(folder) / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    swapped = [json.loads(line)["text"].replace(CONCEPT, SIZES[0]) for line in lines if line.strip()]
    rng = random.Random(f"prior prompts {seed}")   # apart from the dataset's scenes of the same seed
    return swapped + [caption(training_scene(rng), rng, plain_share) for _ in range(count)]


@torch.no_grad()
def word_separation(text_encoders, size: str = CONCEPT) -> dict[str, float]:
    """How the frozen encoders tell ``size`` from the known sizes: for one-object XML captions that
    differ only in the size word, the cosine similarity of their mean Gemma features and of their
    Jina vectors, ``size`` against each known size, and the known sizes against each other."""
    def features(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        text = xml_caption(Scene((ShapeObject("circle", "red", name, 0, 0),), "white"))
        encoding = text_encoders.encode(text, text)
        return encoding.cap_feats[0].mean(dim=0), encoding.pooled[0]

    def cosine(a, b) -> float:
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    new, (a, b) = features(size), (features(name) for name in SIZES)
    return {f"gemma {size}-{SIZES[0]}": cosine(new[0], a[0]), f"gemma {size}-{SIZES[1]}": cosine(new[0], b[0]),
            f"gemma {SIZES[0]}-{SIZES[1]}": cosine(a[0], b[0]),
            f"jina {size}-{SIZES[0]}": cosine(new[1], a[1]), f"jina {size}-{SIZES[1]}": cosine(new[1], b[1]),
            f"jina {SIZES[0]}-{SIZES[1]}": cosine(a[1], b[1])}


def tokens(text_encoders, word: str) -> list[str]:
    """How Gemma's tokenizer splits ``word`` inside a caption's appearance field."""
    import sentencepiece

    tokenizer = text_encoders.gemma.tokenizer
    pieces = sentencepiece.SentencePieceProcessor()
    pieces.LoadFromSerializedProto(tokenizer.model_proto)
    return [pieces.id_to_piece(i) for i in tokenizer(f"<appearance>red, {word}</appearance>\n")]
