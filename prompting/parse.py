"""``parse_prompt``: a NewBie prompt string -> ``ParsedPrompt`` (characters, general tags, caption).

The prompt is text first: only the known NewBie tag names (``tags.py``) are structure, everything
else, including ``>_<``, ``<3`` and unknown ``<word>`` tags, is text. There is no entity
expansion and no DTD processing (this is a small tokenizer of its own, not an XML library), so
entity bombs and external entities are inert text. ``PromptError`` is raised only for known tags
that cannot be matched up; everything else questionable becomes a warning.

Dialects: bare XML; an ``<image>`` root with ``<caption>``; the ComfyUI template's JSON wrapper
(XML in ``image.tags``, caption in ``image.caption``); any of these after a leading system prompt
ending in ``<Prompt Start>``; plain text or tag lists.

Size: prompts longer than ``MAX_PROMPT_CHARS`` raise ``PromptError`` at once (Gemma reads only
512 tokens, a few thousand characters, so such a prompt is a pasted file, not a prompt).
"""

from __future__ import annotations

import json

from .errors import PromptError, error_at, locate
from .parsed import ParsedPrompt
from .structure import parse_structure
from .system_prompts import PROMPT_START

MAX_PROMPT_CHARS = 1_000_000


def parse_prompt(text: str | bytes) -> ParsedPrompt:
    """Parse a NewBie prompt; raise ``PromptError`` for known tags that do not match up.

    ``bytes`` are decoded as UTF-8 (undecodable bytes are a PromptError).
    """
    text = _as_text(text)
    if len(text) > MAX_PROMPT_CHARS:
        raise error_at(
            text,
            MAX_PROMPT_CHARS,
            f"the prompt is {len(text):,} characters, more than the {MAX_PROMPT_CHARS:,} the "
            "parser reads (Gemma reads only the first 512 tokens); shorten it",
        )
    result = ParsedPrompt()
    body_start = _strip_system_prompt(text, result)
    if not _parse_json_wrapper(text, body_start, result):
        parse_structure(text, body_start, len(text), result)
    result.warnings = _dedupe(result.warnings)
    return result


def prompt_warnings(text: str) -> list[str]:
    """Warnings for a prompt that will be encoded anyway: never raises for unreadable XML.

    The model reads text, so an encode node reports a PromptError as one more warning.
    """
    try:
        return parse_prompt(text).warnings
    except PromptError as error:
        return [f"the prompt's XML cannot be read ({error}); it is encoded as written"]


def _as_text(text: str | bytes) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            readable = bytes(text[:error.start]).decode("utf-8")
            raise error_at(
                readable, len(readable), "the prompt is not UTF-8 text; save it as UTF-8"
            ) from None
    raise TypeError(f"parse_prompt takes a string, got {type(text).__name__}")


def _strip_system_prompt(text: str, result: ParsedPrompt) -> int:
    """Find a leading system prompt ("You are ... <Prompt Start>"); return where the rest starts."""
    end = text.find(PROMPT_START)
    # Leading means nothing tag-like before it: system prompts are plain sentences.
    if end < 0 or "<" in text[:end]:
        return 0
    end += len(PROMPT_START)
    result.system_prompt = text[:end]
    result.warnings.append(
        f"the prompt starts with a system prompt ({_shorten(text[:end].strip())!r}); it is part "
        "of the prompt text, so Jina reads it too and Gemma reads it after the node's own system "
        "prompt. Remove it from the prompt and pick it in the encode node's system_prompt input "
        "(a preset or custom) instead"
    )
    return end


def _parse_json_wrapper(text: str, start: int, result: ParsedPrompt) -> bool:
    """Parse the ComfyUI template's JSON wrapper; return False when the text is not one."""
    body = text[start:]
    stripped = body.lstrip()
    if not stripped.startswith("{"):
        return False
    try:
        # strict=False accepts raw newlines inside strings, as the template writes its XML.
        data = json.loads(body, strict=False)
    except (ValueError, RecursionError) as error:
        if '"tags"' in body or '"image"' in body:
            result.warnings.append(
                "the prompt looks like the JSON wrapper of the ComfyUI template but is not valid "
                f"JSON ({_json_problem(error, text, start)}); its tags were read as plain text"
            )
        return False
    image = data.get("image") if isinstance(data, dict) else None
    tags = image.get("tags") if isinstance(image, dict) else None
    if not isinstance(tags, str):
        result.warnings.append(
            "the prompt is JSON without an image.tags string (the ComfyUI template's layout); "
            "the parser found no XML in it, it is encoded as written"
        )
        result.loose_text = body.strip()
        return True
    key = text.find('"tags"', start)
    located = text.find(tags, key) if tags and key >= 0 else (start if not tags else -1)
    if located >= 0:
        # Written without escapes: errors point into the prompt itself.
        parse_structure(text, located, located + len(tags), result)
    else:
        try:
            parse_structure(tags, 0, len(tags), result)
        except PromptError as error:
            raise PromptError(
                f"{error.message} (in the JSON wrapper's image.tags; line and column count "
                "inside that string after unescaping)",
                error.line, error.column, error.snippet,
            ) from None
    result.dialect = "json"
    caption = image.get("caption")
    if isinstance(caption, str) and caption.strip():
        if result.caption is not None:
            result.warnings.append("two captions (image.caption and <caption>); the first is kept")
        else:
            result.caption = caption.strip()
    return True


def _json_problem(error: BaseException, text: str, start: int) -> str:
    if isinstance(error, json.JSONDecodeError):
        line, column = locate(text, start + error.pos)
        return f"{error.msg} at line {line}, column {column}"
    return "nested too deeply" if isinstance(error, RecursionError) else str(error)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MAX_WARNINGS = 50


def _dedupe(warnings: list[str]) -> list[str]:
    unique = list(dict.fromkeys(warnings))
    if len(unique) > _MAX_WARNINGS:
        extra = len(unique) - _MAX_WARNINGS
        unique = unique[:_MAX_WARNINGS] + [f"... and {extra} more warnings"]
    return unique
