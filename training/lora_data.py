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
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
CAPTION_SUFFIXES = (".xml", ".txt")   # preferred first when an image has both


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str
    caption_file: Path | None = None  # where the caption came from, when it is a file of its own

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
    warnings: list[str] = field(default_factory=list)  # captions that train but look wrong


class DatasetError(ValueError):
    """A metadata file that cannot be used at all (the message names it and says why)."""


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
    for number, raw in enumerate(_read_bytes(metadata).splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{metadata.name} line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            skipped.append(Skipped(metadata, f"line {number} is not UTF-8 text ({error.reason} at byte {error.start})"))
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            skipped.append(Skipped(metadata, f"line {number} is not JSON ({error})"))
            continue
        if not isinstance(record, dict):
            skipped.append(Skipped(metadata, f"line {number} is not a JSON object"))
            continue
        _entry(folder, record.get("image", record.get("file_name")), record.get("text", record.get("caption")),
               where, items, skipped)
    return Scan("metadata.jsonl", items, skipped, _xml_warnings(items))


# Column names a metadata.csv may use (Hugging Face ``imagefolder`` writes file_name and text).
CSV_IMAGE_COLUMNS = ("file_name", "image")
CSV_TEXT_COLUMNS = ("text", "caption")


def _scan_csv(folder: Path, metadata: Path) -> Scan:
    items, skipped = [], []
    try:
        text = _read_bytes(metadata).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{metadata} is not UTF-8 text ({error.reason} at byte {error.start}); "
                           f"save it as UTF-8") from None
    try:
        rows = csv.DictReader(io.StringIO(text, newline=""))
        columns = rows.fieldnames or []
        image_column = next((name for name in CSV_IMAGE_COLUMNS if name in columns), None)
        text_column = next((name for name in CSV_TEXT_COLUMNS if name in columns), None)
        if image_column is None or text_column is None:
            raise DatasetError(f"{metadata} needs a column file_name (or image) and a column text (or "
                               f"caption); its columns are {', '.join(map(repr, columns)) or 'none'}")
        for number, row in enumerate(rows, start=2):
            if None in row:
                skipped.append(Skipped(metadata, f"row {number} has more fields than the header"))
                continue
            _entry(folder, row.get(image_column), row.get(text_column), f"{metadata.name} row {number}",
                   items, skipped)
    except csv.Error as error:
        raise DatasetError(f"{metadata} is not a readable CSV file: {error}") from None
    return Scan("metadata.csv", items, skipped, _xml_warnings(items))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path} cannot be read: {error.strerror or error}") from None


def _xml_warnings(items: list[Item]) -> list[str]:
    """A warning for every XML caption that is not well formed, with where the parser stopped:
    it still trains (as the text it is), but the tags probably do not say what was meant."""
    warnings = []
    for item in items:
        if not item.is_xml:
            continue
        wrapper = "<caption>"
        try:
            ElementTree.fromstring(f"{wrapper}{item.caption}</caption>")
        except ElementTree.ParseError as error:
            line, column = error.position
            column = column - len(wrapper) if line == 1 else column
            reason = str(error).split(":")[0]
            warnings.append(f"{item.caption_file or item.image}: the XML caption is not well formed "
                            f"({reason} at line {line}, column {column + 1}); it trains as written")
    return warnings


def _scan_caption_files(folder: Path) -> Scan:
    items, skipped = [], []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        if any(part.startswith(".") for part in image.relative_to(folder).parts):
            continue   # hidden folders (the feature cache among them)
        captions = [image.with_suffix(suffix) for suffix in CAPTION_SUFFIXES if image.with_suffix(suffix).is_file()]
        if not captions:
            skipped.append(Skipped(image, f"no caption file ({image.stem}.txt or {image.stem}.xml)"))
            continue
        try:
            text = captions[0].read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError as error:
            skipped.append(Skipped(image, f"caption file {captions[0].name} is not UTF-8 text "
                                          f"({error.reason} at byte {error.start}); save it as UTF-8"))
            continue
        except OSError as error:
            reason = f"caption file {captions[0].name} cannot be read ({error.strerror or error})"
            skipped.append(Skipped(image, reason))
            continue
        if not text:
            skipped.append(Skipped(image, f"empty caption file {captions[0].name}"))
            continue
        items.append(Item(image, text, captions[0]))
    return Scan("images with caption files", items, skipped, _xml_warnings(items))


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
