"""Prompt weights in the A1111 / ComfyUI syntax, read out of a prompt before it is encoded.

    (text)        weight × 1.1          ((text)) × 1.21, and so on
    (text:1.3)    weight × 1.3          (text:0) removes the text from the image's view
    [text]        weight ÷ 1.1
    \\( \\) \\[ \\] \\\\   the character itself (no weight)

Weights multiply when nested. The result is the prompt with the syntax taken out (``text``) and the
weighted character ranges of that text (``spans``); the XML of a NewBie prompt is ordinary text
here, so a weight can wrap a whole ``<character_N>`` block, one field or one word, and the text
without the syntax is parsed as XML as before.

Literal brackets that are not syntax:
- Danbooru names with parentheses, ``hatsune_miku_(vocaloid)``: an opening bracket written right
  after ``_`` or a letter or digit is text, and so is the closing bracket that matches it;
- ``(text:...)`` whose part after the last colon is not a number, e.g. ``(ratio 16:9)``, is the
  plain ``(text)`` with the colon kept as text.
A bracket that is never closed, or a closing bracket without an opening one, is a ``PromptError``
naming its line and column: escape it (``\\(``) to write it as text.

Pure stdlib.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import error_at

UP, DOWN = 1.1, 1 / 1.1
_NUMBER = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")
_ESCAPABLE = "()[]\\"


@dataclass(frozen=True)
class WeightedText:
    """A prompt with its weight syntax taken out: ``text`` and its weighted ranges, each
    ``(start, end, weight)`` over ``text``'s characters, in order, not overlapping, weight ≠ 1."""

    text: str
    spans: tuple[tuple[int, int, float], ...]

    @property
    def weighted(self) -> bool:
        return bool(self.spans)

    def weight_at(self, index: int) -> float:
        for start, end, weight in self.spans:
            if start <= index < end:
                return weight
        return 1.0

    def without(self, below: float) -> str:
        """The text with every span of weight below ``below`` left out."""
        kept, last = [], 0
        for start, end, weight in self.spans:
            if weight < below:
                kept.append(self.text[last:start])
                last = end
        return "".join(kept) + self.text[last:]


@dataclass
class _Open:
    kind: str             # "(" or "["
    at: int               # offset of the bracket in the source
    start: int            # where its content starts in the output
    literal: bool         # a Danbooru name's bracket: text, not syntax


def parse_weights(source: str) -> WeightedText:
    """Read the weight syntax out of ``source`` (module docstring)."""
    out: list[str] = []
    weights: list[float] = []         # one per output character
    stack: list[_Open] = []
    factor = 1.0
    i = 0
    while i < len(source):
        char = source[i]
        if char == "\\" and i + 1 < len(source) and source[i + 1] in _ESCAPABLE:
            out.append(source[i + 1])
            weights.append(factor)
            i += 2
            continue
        if char in "([":
            literal = char == "(" and i > 0 and (source[i - 1] == "_" or source[i - 1].isalnum())
            stack.append(_Open(char, i, len(out), literal))
            if literal:
                out.append(char)
                weights.append(factor)
            else:
                factor *= UP if char == "(" else DOWN
            i += 1
            continue
        if char in ")]":
            if not stack:
                raise error_at(source, i, f"'{char}' closes a bracket that was never opened; write \\{char} "
                                          f"for the character itself")
            opened = stack.pop()
            expected = ")" if opened.kind == "(" else "]"
            if char != expected:
                raise error_at(source, i, f"'{char}' closes the '{opened.kind}' opened at column "
                                          f"{opened.at - source.rfind(chr(10), 0, opened.at)}; close it "
                                          f"with '{expected}' or escape the brackets (\\{opened.kind})")
            if opened.literal:
                out.append(char)
                weights.append(factor)
            else:
                factor = _close(source, opened, out, weights, factor)
            i += 1
            continue
        out.append(char)
        weights.append(factor)
        i += 1
    if stack:
        opened = stack[-1]
        raise error_at(source, opened.at, f"'{opened.kind}' is never closed; close it with "
                                          f"'{')' if opened.kind == '(' else ']'}' or write \\{opened.kind} "
                                          f"for the character itself")
    return WeightedText("".join(out), _spans(weights))


def _close(source: str, opened: _Open, out: list[str], weights: list[float], factor: float) -> float:
    """End a weighted group: apply an explicit ``:number`` (replacing the ×1.1), return the outer factor."""
    outer = factor / (UP if opened.kind == "(" else DOWN)
    if opened.kind == "(":
        content = "".join(out[opened.start:])
        match = _NUMBER.search(content)
        if match is not None:
            weight = float(match.group(1))
            if weight < 0:
                raise error_at(source, opened.at, f"prompt weight {weight:g} is negative; weights are 0 "
                                                  f"(left out of the image's view) or more")
            del out[opened.start + match.start():]
            del weights[opened.start + match.start():]
            for index in range(opened.start, len(weights)):
                weights[index] = weights[index] / UP * weight
    return outer


def _spans(weights: list[float]) -> tuple[tuple[int, int, float], ...]:
    # Rounded so that undoing a factor (1.1 / 1.1 · 1) gives exactly 1 again.
    weights = [round(w, 9) for w in weights]
    spans, start = [], 0
    for index in range(1, len(weights) + 1):
        if index == len(weights) or weights[index] != weights[start]:
            if weights[start] != 1.0:
                spans.append((start, index, weights[start]))
            start = index
    return tuple(spans)
