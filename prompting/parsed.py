"""``ParsedPrompt``: what the parser reads out of a NewBie prompt."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ParsedPrompt:
    """What a prompt says, as far as its XML goes.

    characters: one dict per ``<character_N>`` block in document order, field tag -> text
        (stripped of surrounding whitespace; the encoders still get the prompt as written).
    character_numbers: the N of each block, same order.
    general: ``<general_tags>`` field tag -> text.
    caption: the ``<caption>`` text (or the JSON wrapper's ``image.caption``), else None.
    warnings: human-readable problems that do not stop encoding.
    dialect: "text" (no known tags), "xml", "image" (``<image>`` root) or "json" (wrapper).
    system_prompt: a leading system prompt found in the prompt (through ``<Prompt Start>``).
    loose_text: text outside any block (a tag list, or words around the XML), stripped.
    stray: character field tags found outside any ``<character_N>`` block, tag -> text.
    """

    characters: list[dict[str, str]] = field(default_factory=list)
    character_numbers: list[int] = field(default_factory=list)
    general: dict[str, str] = field(default_factory=dict)
    caption: str | None = None
    warnings: list[str] = field(default_factory=list)
    dialect: str = "text"
    system_prompt: str | None = None
    loose_text: str = ""
    stray: dict[str, str] = field(default_factory=dict)
