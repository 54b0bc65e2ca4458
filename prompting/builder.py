"""Building NewBie XML from field values, laid out like the official README example.

One tag per line, a blank line between blocks::

    <character_1>
    <n>$character_1$</n>
    <gender>1girl</gender>
    </character_1>

    <general_tags>
    <count>1girl</count>
    </general_tags>

Empty fields are left out. Blocks are appended to the prompt they extend, so characters chained
first and the general tags last give the README's order.
"""

from __future__ import annotations

from collections.abc import Mapping

from .parse import parse_prompt
from .structure import known_tags_in
from .tags import CAPTION, CHARACTER_FIELDS, GENERAL_BLOCK, GENERAL_FIELDS


def character_block(fields: Mapping[str, str], number: int) -> str:
    """``<character_{number}>`` with the non-empty fields in the official order."""
    if number < 1:
        raise ValueError(f"character numbers start at 1, got {number}")
    return _block(f"character_{number}", fields, CHARACTER_FIELDS)


def general_tags_block(fields: Mapping[str, str]) -> str:
    """``<general_tags>`` with the non-empty fields in the official order."""
    return _block(GENERAL_BLOCK, fields, GENERAL_FIELDS)


def caption_block(caption: str) -> str:
    """``<caption>...</caption>`` for a natural-language caption."""
    return _field_line(CAPTION, caption.strip())


def append_block(prompt: str, block: str) -> str:
    """``block`` after ``prompt``, one blank line between (just ``block`` for a blank prompt)."""
    if not prompt.strip():
        return block
    return prompt.rstrip() + "\n\n" + block


def add_character(prompt: str, fields: Mapping[str, str]) -> str:
    """Append the next character: ``<character_{N+1}>`` where N is the highest number in ``prompt``.

    Raises PromptError when ``prompt`` cannot be read (the number would be a guess).
    """
    numbers = parse_prompt(prompt).character_numbers if prompt.strip() else []
    return append_block(prompt, character_block(fields, max(numbers, default=0) + 1))


def add_general_tags(prompt: str, fields: Mapping[str, str]) -> str:
    """Append a ``<general_tags>`` block to ``prompt``."""
    return append_block(prompt, general_tags_block(fields))


def add_caption(prompt: str, caption: str) -> str:
    """Append a ``<caption>`` to ``prompt`` (unchanged when the caption is blank)."""
    if not caption.strip():
        return prompt
    _check_value(CAPTION, caption)
    return append_block(prompt, caption_block(caption))


def _block(name: str, fields: Mapping[str, str], order: tuple[str, ...]) -> str:
    unknown = [key for key in fields if key not in order]
    if unknown:
        raise ValueError(
            f"<{name}> has no field {', '.join(map(repr, unknown))}; allowed: {', '.join(order)}"
        )
    lines = [f"<{name}>"]
    for key in order:
        value = fields.get(key) or ""
        _check_value(key, value)
        if value.strip():
            lines.append(_field_line(key, value.strip()))
    lines.append(f"</{name}>")
    return "\n".join(lines)


def _field_line(name: str, value: str) -> str:
    return f"<{name}>{value}</{name}>"


def _check_value(name: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"<{name}> takes text, got {type(value).__name__}")
    tags = known_tags_in(value)
    if tags:
        raise ValueError(
            f"the text for <{name}> contains the tag {tags[0]}; field values are plain text, "
            "remove the tag (build other blocks with their own node)"
        )
