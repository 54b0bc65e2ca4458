"""A LoRA training set on disk: which images with which captions, and which files are left out and why.

Layouts (the first that is present wins):
- ``metadata.jsonl``: one JSON object per line, ``{"image": "a.png", "text": "..."}`` (``file_name``
  and ``caption`` are accepted too, as Hugging Face ``imagefolder`` datasets write them);
- ``metadata.csv``: columns ``file_name`` and ``text`` (Hugging Face ``imagefolder``);
- a folder of images, each with a caption file of the same stem: ``.xml`` (a NewBie XML prompt)
  or ``.txt`` (any text; a ``.txt`` whose text starts with ``<`` is read as XML too).
Image paths in the metadata files are relative to the folder. Every file that is not used is
reported with the reason: no caption, an empty caption, a missing or unreadable image (truncated
files included), too small, or an aspect ratio outside the allowed range; none stops the run.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
CAPTION_SUFFIXES = (".xml", ".txt")   # preferred first when an image has both


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str

    @property
    def is_xml(self) -> bool:
        """A NewBie XML caption (the official training gave these its XML system prompt)."""
        return self.caption.lstrip().startswith("<")


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Scan:
    layout: str
    items: list[Item]
    skipped: list[Skipped]


class UnreadableImage(ValueError):
    """An image file PIL cannot read (the message says why)."""


def scan_dataset(folder: str | Path) -> Scan:
    """The items of the dataset in ``folder`` (sorted by image path) and the files left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    if (folder / "metadata.jsonl").is_file():
        scan = _scan_jsonl(folder, folder / "metadata.jsonl")
    elif (folder / "metadata.csv").is_file():
        scan = _scan_csv(folder, folder / "metadata.csv")
    else:
        scan = _scan_caption_files(folder)
    scan.items.sort(key=lambda item: str(item.image))
    return scan


def _entry(folder: Path, image: str | None, text, where: str, items: list, skipped: list) -> None:
    if not isinstance(image, str) or not image:
        skipped.append(Skipped(Path(where), "no image file named (expected an 'image' or 'file_name' entry)"))
        return
    path = folder / image
    if not isinstance(text, str):
        skipped.append(Skipped(path, f"{where}: no caption text (expected a 'text' or 'caption' entry)"))
    elif not path.is_file():
        skipped.append(Skipped(path, f"listed in {where} but the file does not exist"))
    elif not text.strip():
        skipped.append(Skipped(path, f"empty caption ({where})"))
    else:
        items.append(Item(path, text.strip()))


def _scan_jsonl(folder: Path, metadata: Path) -> Scan:
    items, skipped = [], []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{metadata.name} line {number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            skipped.append(Skipped(metadata, f"line {number} is not JSON ({error})"))
            continue
        if not isinstance(record, dict):
            skipped.append(Skipped(metadata, f"line {number} is not a JSON object"))
            continue
        _entry(folder, record.get("image", record.get("file_name")), record.get("text", record.get("caption")),
               where, items, skipped)
    return Scan("metadata.jsonl", items, skipped)


def _scan_csv(folder: Path, metadata: Path) -> Scan:
    items, skipped = [], []
    with metadata.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle)
        if rows.fieldnames is None or not {"file_name", "text"} <= set(rows.fieldnames):
            raise ValueError(f"{metadata} needs the columns file_name and text; it has {rows.fieldnames}")
        for number, row in enumerate(rows, start=2):
            _entry(folder, row.get("file_name"), row.get("text"), f"{metadata.name} row {number}", items, skipped)
    return Scan("metadata.csv", items, skipped)


def _scan_caption_files(folder: Path) -> Scan:
    items, skipped = [], []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        if any(part.startswith(".") for part in image.relative_to(folder).parts):
            continue   # hidden folders (the feature cache among them)
        captions = [image.with_suffix(suffix) for suffix in CAPTION_SUFFIXES if image.with_suffix(suffix).is_file()]
        if not captions:
            skipped.append(Skipped(image, f"no caption file ({image.stem}.txt or {image.stem}.xml)"))
            continue
        text = captions[0].read_text(encoding="utf-8").strip()
        if not text:
            skipped.append(Skipped(image, f"empty caption file {captions[0].name}"))
            continue
        items.append(Item(image, text))
    return Scan("images with caption files", items, skipped)


# ---- images ------------------------------------------------------------------------------------

def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the file's header; UnreadableImage if it is not an image PIL reads."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"unreadable image ({error})") from None


def decode_rgb(data: bytes):
    """The whole image as an RGB PIL image (transparency over white, as the official ``imgproc``
    does); UnreadableImage for a truncated or corrupt file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                return flat
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"truncated or corrupt image ({error})") from None


@dataclass(frozen=True)
class Filters:
    """Which images train: the shorter side at least ``min_side`` pixels, width / height within
    [min_aspect, max_aspect]."""

    min_side: int
    min_aspect: float = 0.5
    max_aspect: float = 2.0

    def __post_init__(self):
        if self.min_side < 0 or not 0 < self.min_aspect <= 1 <= self.max_aspect:
            raise ValueError(f"filters need min_side >= 0 and min_aspect <= 1 <= max_aspect; got "
                             f"{self.min_side}, {self.min_aspect}, {self.max_aspect}")

    def problem(self, width: int, height: int) -> str | None:
        """Why an image of this size is left out, or None."""
        if min(width, height) < self.min_side:
            return f"too small: {width}x{height} (the shorter side must be at least {self.min_side} px)"
        aspect = width / height
        if not self.min_aspect <= aspect <= self.max_aspect:
            return (f"aspect ratio {aspect:.2f} ({width}x{height}) outside "
                    f"{self.min_aspect:g}-{self.max_aspect:g} (width / height)")
        return None
