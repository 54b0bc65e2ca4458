"""PromptError: the one exception of the prompt parser, located by line and column."""

from __future__ import annotations


class PromptError(ValueError):
    """A prompt whose XML structure cannot be read.

    ``line`` and ``column`` are 1-based and count characters of the text given to
    ``parse_prompt``; ``snippet`` is the text around the offending place.
    """

    __module__ = "nextdit_nodes"   # ComfyUI's error panel shows the module (files/errors.py)

    def __init__(self, message: str, line: int, column: int, snippet: str) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.snippet = snippet
        super().__init__(f"line {line}, column {column}: {message} (near {snippet!r})")

    def __reduce__(self):  # keeps it picklable despite the extra constructor arguments
        return (type(self), (self.message, self.line, self.column, self.snippet))


def locate(source: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``source``; lines end at "\\n"."""
    line_start = source.rfind("\n", 0, offset) + 1
    return source.count("\n", 0, offset) + 1, offset - line_start + 1


def snippet_at(source: str, offset: int, before: int = 30, after: int = 40) -> str:
    """The text around ``offset`` on its own line, at most ``before + after`` characters."""
    line_start = source.rfind("\n", 0, offset) + 1
    line_end = source.find("\n", offset)
    line_end = len(source) if line_end < 0 else line_end
    return source[max(line_start, offset - before):min(line_end, offset + after)]


def error_at(source: str, offset: int, message: str) -> PromptError:
    """A PromptError pointing at ``offset`` of ``source``."""
    line, column = locate(source, offset)
    return PromptError(message, line, column, snippet_at(source, offset))
