"""JSON in and out of the server: strict on the way in (no NaN / Infinity, no nesting deep enough
to exhaust the parser), never bare ``NaN`` on the way out (not JSON; browsers refuse it)."""

from __future__ import annotations

import json
import math

from aiohttp import web

MAX_DEPTH = 200  # far deeper than any workflow; json.loads itself fails near 1000


class BadJSON(ValueError):
    """A request body that is not the JSON this server takes; the message says why."""


def _no_constants(name: str):
    raise BadJSON(f"{name} is not a JSON number; send a finite number")


def _depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` outside strings (a cheap scan before parsing)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads(text: str | bytes):
    """Parse a request body; :class:`BadJSON` with the reason when it is not acceptable."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadJSON(f"the body is not UTF-8 ({error})") from None
    if _depth(text) > MAX_DEPTH:
        raise BadJSON(f"the JSON is nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except BadJSON:
        raise
    except (ValueError, RecursionError) as error:
        raise BadJSON(f"the body is not JSON ({error})") from None


async def read(request: web.Request):
    return loads(await request.read())


def dumps(value) -> str:
    """JSON text with every non-finite float written as null."""
    try:
        return json.dumps(value, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, default=str)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def json_response(value, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)
