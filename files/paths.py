"""Turning names from requests into paths that cannot leave their folder."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


def inside(base: Path, *parts: str) -> Path | None:
    """``base/parts`` resolved (symlinks followed), or None when it would leave ``base``.

    Refused outright: absolute names, drive letters, ``..`` segments and NUL bytes; then the
    resolved path must still lie inside the resolved ``base`` (no symlink escapes)."""
    pieces: list[str] = []
    for part in parts:
        if not part:
            continue
        if "\x00" in part or PureWindowsPath(part).drive or PureWindowsPath(part).root:
            return None
        path = PurePosixPath(part.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            return None
        pieces += [piece for piece in path.parts if piece not in ("", ".")]
    root = base.resolve()
    resolved = root.joinpath(*pieces).resolve()
    if resolved != root and root not in resolved.parents:
        return None
    return resolved
