"""Scoring a generated image against the scene its caption asked for.

For each requested object, the checker looks only at that object's grid cell: pixels that differ
clearly from the image's background show that an object is there; the inner half of them give its
colour (nearest palette entry); pixels at least half covered by that colour make its mask, whose
bounding-box extent gives its size and whose best-matching ideal shape (intersection over union
with a circle, square and triangle drawn in the same box) its shape. Colour and position are
judged together: the right colour in the requested cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import ALL_SIZE_FRACTIONS, COLOURS, SHAPES, Scene, ShapeObject

# Pixels at least this far (RGB Euclidean) from the background belong to an object.
OBJECT_DISTANCE = 60.0
# A cell needs this share of object pixels to hold an object at all (a small triangle fills ~10 %).
MIN_OBJECT_SHARE = 0.03
# Sizes by extent (of the cell's width): each size up to the midpoint to the next larger one.
_BY_EXTENT = sorted(ALL_SIZE_FRACTIONS, key=ALL_SIZE_FRACTIONS.get)
SIZE_THRESHOLDS = [(ALL_SIZE_FRACTIONS[a] + ALL_SIZE_FRACTIONS[b]) / 2 for a, b in zip(_BY_EXTENT, _BY_EXTENT[1:])]


@dataclass(frozen=True)
class ObjectScore:
    colour_position: bool
    size: bool
    shape: bool


def _background(image: np.ndarray) -> np.ndarray:
    # Objects cover well under half of any image, so the per-channel median is the background.
    return np.median(image.reshape(-1, 3), axis=0)


def _ideal_mask(shape: str, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    u = (xs + 0.5) / width * 2 - 1   # -1..1 across the box
    v = (ys + 0.5) / height * 2 - 1
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "square":
        return np.ones((height, width), bool)
    return np.abs(u) <= (v + 1) / 2  # triangle, apex up


def classify_shape(mask: np.ndarray) -> str:
    """Best IoU between ``mask`` (cropped to its bounding box) and each ideal shape."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ious = []
    for shape in SHAPES:
        ideal = _ideal_mask(shape, *crop.shape)
        ious.append((crop & ideal).sum() / max((crop | ideal).sum(), 1))
    return SHAPES[int(np.argmax(ious))]


def object_present(image: np.ndarray, obj: ShapeObject) -> bool:
    """Whether anything is drawn in the object's grid cell (the checker's first test)."""
    height, width = image.shape[:2]
    cell = image[obj.row * height // 3:(obj.row + 1) * height // 3,
                 obj.column * width // 3:(obj.column + 1) * width // 3].astype(np.float64)
    distance = np.linalg.norm(cell - _background(image), axis=-1)
    return (distance > OBJECT_DISTANCE).mean() >= MIN_OBJECT_SHARE


def score_object(image: np.ndarray, obj: ShapeObject, background: np.ndarray) -> ObjectScore:
    height, width = image.shape[:2]
    top, bottom = obj.row * height // 3, (obj.row + 1) * height // 3
    left, right = obj.column * width // 3, (obj.column + 1) * width // 3
    cell = image[top:bottom, left:right].astype(np.float64)
    distance = np.linalg.norm(cell - background, axis=-1)
    present = distance > OBJECT_DISTANCE
    if present.mean() < MIN_OBJECT_SHARE:
        return ObjectScore(False, False, False)
    # The object's own colour: the inner half of its pixels (the farthest from the background),
    # away from edges blended with the background.
    colour = cell[present & (distance >= np.median(distance[present]))].mean(axis=0)
    # Each pixel's coverage by the object, from where it lies between background and object
    # colour. The outline is the half-coverage contour, which a soft edge leaves in place, where a
    # fixed distance threshold would grow bright objects and shrink dim ones.
    direction = colour - background
    mask = (cell - background) @ direction > 0.5 * (direction @ direction)
    names = list(COLOURS)
    nearest = names[int(np.argmin([np.linalg.norm(colour - np.array(COLOURS[n])) for n in names]))]
    ys, xs = np.nonzero(mask)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / cell.shape[1]
    size = _BY_EXTENT[sum(extent > threshold for threshold in SIZE_THRESHOLDS)]
    return ObjectScore(nearest == obj.colour, size == obj.size, classify_shape(mask) == obj.shape)


def score_image(image: np.ndarray, scene: Scene) -> list[ObjectScore]:
    """``image`` uint8 [H, W, 3]; one score per object the scene requests."""
    background = _background(image)
    return [score_object(image, obj, background) for obj in scene.objects]


def summarise(per_image: list[list[ObjectScore]]) -> dict[str, float]:
    """Percentages per object and per image (an image counts only if every object is right)."""
    objects = [s for scores in per_image for s in scores]
    def share(values):
        values = list(values)
        return 100.0 * sum(values) / max(len(values), 1)
    return {
        "colour_position_per_object": share(s.colour_position for s in objects),
        "colour_position_per_image": share(all(s.colour_position for s in sc) for sc in per_image),
        "size_per_object": share(s.size for s in objects),
        "shape_per_object": share(s.shape for s in objects),
        "all_right_per_image": share(all(s.colour_position and s.size and s.shape for s in sc)
                                     for sc in per_image),
    }
