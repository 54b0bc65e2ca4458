"""The NewBie XML tag vocabulary (docs/newbie-image.md §6) and how a tag name is classified."""

from __future__ import annotations

import re

# Field tags of a <character_N> block, in the order the builder writes them.
CHARACTER_FIELDS: tuple[str, ...] = (
    "n", "gender", "appearance", "clothing", "body_type", "expression", "action", "interaction",
    "position",
)
# Field tags of the <general_tags> block, in the order the builder writes them.
GENERAL_FIELDS: tuple[str, ...] = (
    "count", "artists", "style", "background", "environment", "perspective", "atmosphere",
    "lighting", "quality", "objects", "other", "resolution",
)
GENERAL_BLOCK = "general_tags"
CAPTION = "caption"
ROOT = "image"

# Six digits is far more characters than any image holds; longer numbers are not tags (and
# stay clear of Python's int-parsing limits).
_CHARACTER_NAME = re.compile(r"character_([0-9]{1,6})")

# Names people write for a known tag (other dialects, typos seen in the wild) -> the known tag.
ALIASES: dict[str, str] = {
    "name": "n",
    "img": "image",
    "general": "general_tags",
    "character": "character_1",
    "characters": "character_1",
    "tags": "general_tags",
}

KNOWN_NAMES: tuple[str, ...] = (
    ROOT, CAPTION, GENERAL_BLOCK, "character_1", *CHARACTER_FIELDS, *GENERAL_FIELDS,
)


def character_number(name: str) -> int | None:
    """N for a ``character_N`` tag name, else None."""
    match = _CHARACTER_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def tag_kind(name: str) -> str | None:
    """What a tag name is: "root", "character", "general", "caption", "character_field",
    "general_field", or None for a name that is not a NewBie tag (then it is plain text)."""
    if name in _FIXED_KINDS:
        return _FIXED_KINDS[name]
    if character_number(name) is not None:
        return "character"
    return None


_FIXED_KINDS: dict[str, str] = {
    ROOT: "root",
    CAPTION: "caption",
    GENERAL_BLOCK: "general",
    **{name: "character_field" for name in CHARACTER_FIELDS},
    **{name: "general_field" for name in GENERAL_FIELDS},
}
