"""A synthetic captioned dataset: simple coloured shapes on a 3×3 grid, with NewBie-style captions.

Each image holds one to three objects, each a shape of one colour and size in its own grid cell,
on a plain background. The caption is NewBie XML (one ``<character_N>`` per object: ``<n>`` the
shape, ``<appearance>`` colour and size, ``<position>`` the cell; ``<general_tags>`` with
``<count>`` and ``<background>``) or, for a share of samples, plain English, as the real training
mixed both. Rendering is deterministic given the scene, so the adherence checker can score images
against the scene that captioned them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB; far apart so a checker can tell them by nearest colour
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (40, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 190),
    "orange": (245, 130, 20),
}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
BACKGROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)}
COUNT_WORDS = {1: "one object", 2: "two objects", 3: "three objects"}
# Object extent as a fraction of a grid cell. Small objects are 13 px at 64×64: at 0.45 (10 px)
# the 8×-downsampling autoencoder rounded their corners (shape 54 % on reconstructions).
SIZE_FRACTION = {"small": 0.6, "large": 0.85}
# A size the base training never showed, taught with a LoRA (``lora_demo.py``): 6 px at 64×64. The
# autoencoder keeps it apart from small (size right on 98 % of its reconstructions of held-out tiny
# scenes; 88 % at 0.3), where it turns every unseen colour or shape into a known one (README).
NEW_SIZES = {"tiny": 0.28}
ALL_SIZE_FRACTIONS = {**NEW_SIZES, **SIZE_FRACTION}
# The XML values of a grid cell and a background (also whole words of the tokenizer).
CELL_TAGS = tuple(f"{row}_{column}" for row in ROWS for column in COLUMNS)          # row-major
BACKGROUND_TAGS = {name: f"{name}_background" for name in BACKGROUNDS}


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    row: int      # 0..2 (top..bottom)
    column: int   # 0..2 (left..right)

    @property
    def position(self) -> str:
        return CELL_TAGS[self.row * len(COLUMNS) + self.column]


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str


def random_scene(rng: random.Random, allowed=None, pick_size=None) -> Scene:
    """One to three objects in distinct cells; ``allowed(obj) -> bool`` filters combinations;
    ``pick_size(rng) -> name`` chooses sizes (default: uniformly among ``SIZES``)."""
    n_objects = rng.randint(1, 3)
    cells = rng.sample(range(9), n_objects)
    objects = []
    for cell in cells:
        while True:
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))   # the shipped datasets' draw order
            size = rng.choice(SIZES) if pick_size is None else pick_size(rng)
            obj = ShapeObject(shape, colour, size, cell // 3, cell % 3)
            if allowed is None or allowed(obj):
                break
        objects.append(obj)
    return Scene(tuple(objects), rng.choice(list(BACKGROUNDS)))


def render(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """The scene as uint8 RGB [size, size, 3]; shapes drawn at ``supersample``× then downscaled."""
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = big / 3
    for obj in scene.objects:
        cx, cy = (obj.column + 0.5) * cell, (obj.row + 0.5) * cell
        half = ALL_SIZE_FRACTIONS[obj.size] * cell / 2
        box = (cx - half, cy - half, cx + half, cy + half)
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif obj.shape == "square":
            draw.rectangle(box, fill=colour)
        else:  # triangle, apex up
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
    return np.asarray(image.resize((size, size), Image.LANCZOS))


# One spelling of each caption part, shared by the captions and the tokenizer's whole pieces.
def _field(tag: str, value: str) -> str:
    return f"<{tag}>{value}</{tag}>\n"


def _appearance(colour: str, size: str) -> str:
    return f"{colour}, {size}"


def _at_cell(row: str, column: str) -> str:
    return f" at the {row} {column}"


def _on_background(name: str) -> str:
    return f", on a {name} background"


def xml_caption(scene: Scene) -> str:
    blocks = []
    for index, obj in enumerate(scene.objects, start=1):
        blocks.append(f"<character_{index}>\n" + _field("n", obj.shape)
                      + _field("appearance", _appearance(obj.colour, obj.size))
                      + _field("position", obj.position) + f"</character_{index}>")
    blocks.append("<general_tags>\n" + _field("count", COUNT_WORDS[len(scene.objects)])
                  + _field("background", BACKGROUND_TAGS[scene.background]) + "</general_tags>")
    return "\n\n".join(blocks)


def plain_caption(scene: Scene) -> str:
    parts = [f"a {o.size} {o.colour} {o.shape}" + _at_cell(ROWS[o.row], COLUMNS[o.column])
             for o in scene.objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return listed + _on_background(scene.background)


def caption(scene: Scene, rng: random.Random, plain_share: float = 0.3) -> str:
    return plain_caption(scene) if rng.random() < plain_share else xml_caption(scene)


def vocabulary() -> list[str]:
    """Every word the captions use (for building the embedded tokenizer)."""
    words = set(SHAPES) | set(COLOURS) | set(SIZES) | set(ROWS) | set(COLUMNS)
    words |= set(CELL_TAGS) | set(BACKGROUND_TAGS.values()) | set(BACKGROUNDS)
    words |= {w for phrase in COUNT_WORDS.values() for w in phrase.split()}
    words |= {"a", "at", "the", "and", "on", "background"}
    return sorted(words)


def caption_pieces() -> list[str]:
    """The embedded tokenizer's whole pieces: each XML field with its value and newline
    (``<n>circle</n>\n``, ``<appearance>red, small</appearance>\n``, ...), the plain captions' cell
    and background phrases (`` at the top left``), and the bare tags, cells and backgrounds for
    text in other forms. An XML object is then five tokens and captions average 14 tokens (31 with
    whole tags only, 61 as fragments), so each training step takes a fifth less time.
    Spaces are written "▁", as SentencePiece sees them."""
    pieces = []
    for index in range(1, max(COUNT_WORDS) + 1):
        pieces += [f"<character_{index}>\n", f"</character_{index}>\n\n", f"</character_{index}>"]
    pieces += [_field("n", shape) for shape in SHAPES]
    pieces += [_field("appearance", _appearance(colour, size)) for colour in COLOURS for size in SIZES]
    pieces += [_field("position", cell) for cell in CELL_TAGS]
    pieces += [_field("count", words) for words in COUNT_WORDS.values()]
    pieces += [_field("background", tag) for tag in BACKGROUND_TAGS.values()]
    pieces += [_at_cell(row, column) for row in ROWS for column in COLUMNS]
    pieces += [_on_background(name) for name in BACKGROUNDS]
    for tag in ("n", "appearance", "position", "count", "background"):
        pieces += [f"<{tag}>", f"</{tag}>\n", f"</{tag}>"]
    pieces += ["<general_tags>\n", "</general_tags>"]
    pieces += [*CELL_TAGS, *BACKGROUND_TAGS.values()]
    return [piece.replace(" ", "\u2581") for piece in pieces]


def held_out(obj: ShapeObject) -> bool:
    """Shape–colour–cell combinations never shown in training (about one in seven)."""
    return (SHAPES.index(obj.shape) * 5 + list(COLOURS).index(obj.colour) * 3
            + obj.row * 3 + obj.column) % 7 == 0


def training_scene(rng: random.Random) -> Scene:
    return random_scene(rng, allowed=lambda o: not held_out(o))


def held_out_scenes(count: int, seed: int = 1234) -> list[Scene]:
    """Evaluation scenes in which every object is a combination training never showed."""
    rng = random.Random(seed)
    return [random_scene(rng, allowed=held_out) for _ in range(count)]
