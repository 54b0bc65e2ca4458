"""The XML part of the parser: known tags matched on a stack, fields collected, warnings raised.

Only ``<name>``, ``</name>`` and ``<name/>`` with a known NewBie tag name are structure; any other
``<...>`` (unknown words, ``>_<``, ``<3``, ``<!DOCTYPE ...>``) is text and is never interpreted.
One pass over the text with one regex: linear time, no recursion.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass

from .count import read_head_count
from .errors import error_at, locate
from .parsed import ParsedPrompt
from .tags import ALIASES, KNOWN_NAMES, character_number, tag_kind

# A tag: "<", an optional "/", an XML-ish name, optional whitespace, an optional "/", ">".
TAG = re.compile(r"<(/?)([A-Za-z_][\w.\-]*)[ \t\r\n]*(/?)>")
_BLOCKS = ("character", "general")
_FIELDS = ("character_field", "general_field", "caption")
_UNKNOWN_REPORTED = 20  # distinct unknown tag names named in warnings; the rest are summarised
# NewBie prompts nest three deep (<image>, a block, a field); a deeper pile of known tags is not
# a prompt, and refusing it keeps the parse linear in the text length.
MAX_DEPTH = 16


@dataclass
class _Open:
    name: str
    kind: str
    start: int  # offset of its "<"
    content: int  # offset just after its ">"
    block: dict[str, str] | None = None  # where a block's fields go
    owner: _Open | None = None  # the innermost block (character or general_tags) around it


def known_tags_in(text: str) -> list[str]:
    """The known NewBie tags (as written, e.g. "</n>") that occur in ``text``."""
    return [m.group(0) for m in TAG.finditer(text) if tag_kind(m.group(2)) is not None]


def parse_structure(source: str, start: int, end: int, result: ParsedPrompt) -> None:
    """Parse ``source[start:end]`` into ``result``; offsets (and errors) refer to ``source``."""
    state = _State(source, result)
    cursor = start
    for match in TAG.finditer(source, start, end):
        closing, name, self_closing = match.groups()
        kind = tag_kind(name)
        if kind is None:
            state.unknown[name] += 0 if closing else 1  # a pair counts once
            continue
        if closing and self_closing:
            result.warnings.append(f"{match.group(0)} is not a valid tag; it is kept as text")
            continue
        state.text_between(cursor, match.start())
        cursor = match.end()
        if closing:
            state.close(name, match.start())
        else:
            state.open(name, kind, match.start(), match.end())
            if self_closing:  # <n/> is an empty element
                state.close(name, match.start())
    state.text_between(cursor, end)
    if state.stack:
        top = state.stack[-1]
        raise error_at(
            source, top.start, f"<{top.name}> is never closed: add </{top.name}> after its content"
        )
    state.finish(start, end)


class _State:
    def __init__(self, source: str, result: ParsedPrompt) -> None:
        self.source = source
        self.result = result
        self.stack: list[_Open] = []
        self.unknown: Counter[str] = Counter()
        self.loose: list[str] = []
        self.roots = 0
        self.general_blocks = 0
        self.saw_known = False

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)

    def text_between(self, begin: int, stop: int) -> None:
        """Text outside known tags: loose at the top level, misplaced directly inside a block."""
        top = self.stack[-1] if self.stack else None
        if top is not None and top.kind in _FIELDS:
            return  # a field's text is read whole when it closes
        words = self.source[begin:stop].strip()
        if not words:
            return
        if top is None or top.kind == "root":
            self.loose.append(words)
        else:
            self.warn(f"text {_short(words)!r} inside <{top.name}> is outside any field tag")

    def open(self, name: str, kind: str, start: int, content: int) -> None:
        self.saw_known = True
        parent = self.stack[-1] if self.stack else None
        if len(self.stack) >= MAX_DEPTH:
            raise error_at(
                self.source, start,
                f"<{name}> is nested {MAX_DEPTH + 1} tags deep; NewBie prompts nest at most 3 "
                "deep (<image>, a block, a field): close the tags before opening new ones",
            )
        if parent is None:
            owner = None
        else:
            owner = parent if parent.kind in _BLOCKS else parent.owner
        entry = _Open(name, kind, start, content, owner=owner)
        if parent is not None and parent.kind in _FIELDS:
            self.warn(f"<{name}> is inside <{parent.name}>: field tags hold text, not other tags")
        if kind == "character":
            self._check_block_parent(name, parent)
            entry.block = {}
            self.result.characters.append(entry.block)
            self.result.character_numbers.append(character_number(name))
        elif kind == "general":
            self._check_block_parent(name, parent)
            self.general_blocks += 1
            if self.general_blocks == 2:
                self.warn("more than one <general_tags> block; their fields are merged")
            entry.block = self.result.general
        elif kind == "root":
            self.roots += 1
            if parent is not None:
                self.warn(f"<image> is inside <{parent.name}>; it is the root of the prompt")
            if self.roots == 2:
                self.warn("more than one <image> root")
        self.stack.append(entry)

    def _check_block_parent(self, name: str, parent: _Open | None) -> None:
        if parent is not None and parent.kind in _BLOCKS:
            self.warn(f"<{name}> is inside <{parent.name}>; blocks do not nest, "
                      f"close </{parent.name}> first")

    def close(self, name: str, start: int) -> None:
        if self.stack and self.stack[-1].name == name:
            self._finish_element(self.stack.pop(), start)
            return
        opened = next((e for e in reversed(self.stack) if e.name == name), None)
        if opened is None:
            raise error_at(
                self.source, start,
                f"</{name}> has no matching <{name}> before it: add the opening <{name}> or "
                f"remove </{name}>",
            )
        top = self.stack[-1]
        line, column = locate(self.source, top.start)
        raise error_at(
            self.source, start,
            f"</{name}> closes <{name}>, but <{top.name}> opened inside it at line {line}, column "
            f"{column} is still open: close it with </{top.name}> first",
        )

    def _finish_element(self, entry: _Open, close_start: int) -> None:
        value = self.source[entry.content:close_start].strip()
        block = entry.owner
        if entry.kind == "character_field":
            if block is not None and block.kind == "character":
                self._put(block.block, entry.name, value, f"<{block.name}>")
            else:
                self.warn(f"<{entry.name}> is outside any <character_N> block; it belongs in one")
                self._put(self.result.stray, entry.name, value, "the prompt")
        elif entry.kind == "general_field":
            if block is None or block.kind != "general":
                where = f"inside <{block.name}>" if block is not None else "outside <general_tags>"
                self.warn(f"<{entry.name}> is {where}; it belongs in <general_tags>")
            self._put(self.result.general, entry.name, value, "<general_tags>")
        elif entry.kind == "caption":
            if block is not None:
                self.warn(f"<caption> is inside <{block.name}>; put it at the top level or "
                          "directly in <image>")
            if self.result.caption is None:
                self.result.caption = value
            else:
                self.warn("more than one <caption>; the first is kept")
        elif entry.kind == "character" and not any(entry.block.values()):
            self.warn(f"<{entry.name}> is empty")
        elif entry.kind == "general" and not any(entry.block.values()):
            self.warn("<general_tags> is empty")

    def _put(self, block: dict[str, str], name: str, value: str, where: str) -> None:
        if name in block:
            self.warn(f"{where} has more than one <{name}>; the first is kept")
        else:
            block[name] = value

    def finish(self, start: int, end: int) -> None:
        result = self.result
        if self.roots:
            result.dialect = "image"
        elif self.saw_known:
            result.dialect = "xml"
        result.loose_text = "\n".join(self.loose)
        _check_numbers(result)
        _check_count(result)
        self._report_unknown()
        if self.source.find("<!", start, end) >= 0 or self.source.find("<?", start, end) >= 0:
            self.warn("markup declarations (<!DOCTYPE>, <!ENTITY>, <?...?>, <![CDATA[) are not "
                      "processed: they are kept as plain text and no entity is expanded")

    def _report_unknown(self) -> None:
        names = list(self.unknown)
        for name in names[:_UNKNOWN_REPORTED]:
            count = self.unknown[name]
            times = f" ({count} times)" if count > 1 else ""
            self.warn(f"unknown tag <{name}>{times} is kept as plain text{_suggestion(name)}")
        if len(names) > _UNKNOWN_REPORTED:
            extra = len(names) - _UNKNOWN_REPORTED
            self.warn(f"... and {extra} more unknown tag names, kept as text")


def _suggestion(name: str) -> str:
    lower = name.lower()
    if tag_kind(lower) is not None:
        return f"; did you mean <{lower}>? (tag names are lower case)"
    alias = ALIASES.get(lower)
    if alias is None:
        close = difflib.get_close_matches(lower, KNOWN_NAMES, n=1, cutoff=0.75)
        alias = close[0] if close else None
    return f"; did you mean <{alias}>?" if alias else ""


def _check_numbers(result: ParsedPrompt) -> None:
    numbers = result.character_numbers
    if not numbers:
        return
    counts = Counter(numbers)
    for number, times in counts.items():
        if times > 1:
            result.warnings.append(
                f"<character_{number}> appears {times} times; number each character once"
            )
    if 0 in counts:
        result.warnings.append("<character_0>: character numbers start at 1")
    gaps, previous = [], 0
    for number in sorted(counts):
        if number > previous + 1:
            first, last = previous + 1, number - 1
            gaps.append(str(first) if first == last else f"{first}-{last}")
        previous = number
    if gaps:
        result.warnings.append(
            f"character numbers skip {', '.join(gaps[:5])}{' ...' if len(gaps) > 5 else ''}: "
            "number the characters 1, 2, 3, ..."
        )
    if len(counts) == len(numbers) and numbers != sorted(numbers):
        result.warnings.append("the character blocks are not in number order")


def _check_count(result: ParsedPrompt) -> None:
    value = result.general.get("count")
    described = len(result.characters)
    if value is None or described == 0:
        return
    head_count = read_head_count(value)
    if head_count is None:
        return
    for conflict in head_count.conflicts:
        result.warnings.append(f"<count>{value}</count>: {conflict}")
    people = f"the prompt describes {described} character{'s' if described != 1 else ''}"
    if head_count.exact is not None and head_count.exact != described:
        result.warnings.append(f"<count>{value}</count> means {head_count.exact} but {people}")
    elif head_count.exact is None and described < head_count.at_least:
        result.warnings.append(
            f"<count>{value}</count> means at least {head_count.at_least} but {people}"
        )
    elif head_count.groups:
        _check_genders(result, value, dict(head_count.groups))


def _check_genders(result: ParsedPrompt, value: str, groups: dict[str, int]) -> None:
    """When every character's <gender> is a single person ("1girl"), their tally must match."""
    genders = [read_head_count(c.get("gender", "")) for c in result.characters]
    if not all(g is not None and g.exact == 1 and g.groups for g in genders):
        return
    tally: dict[str, int] = {}
    for gender in genders:
        group = gender.groups[0][0]
        tally[group] = tally.get(group, 0) + 1
    if tally != groups:
        written = ", ".join(c["gender"] for c in result.characters)
        result.warnings.append(
            f"<count>{value}</count> disagrees with the characters' genders ({written})"
        )


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
