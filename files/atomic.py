"""Writing files so that a reader never sees half of one: everything the pack writes goes to a
hidden temporary name in the same folder and is renamed over the final name (``os.replace``, one
atomic step on every platform) only once it is complete. A run killed mid-write (kill -9, Ctrl-C,
power) leaves at most a ``.NAME.PID.partial`` file, which :func:`clean_leftovers` removes at the
next start once the process that wrote it is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

_LEFTOVER = re.compile(r"^\..+\.(\d+)\.partial$")


def partial_name(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, in the same folder, with the writer's
    process id (two processes writing the same file never share it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write; on success it replaces ``path``, on failure it is removed.

    Writers that pick a format from the file name (PIL) must be told the format explicitly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as partial, open(partial, "wb") as out:
        out.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


def _alive(pid: int, path: Path) -> bool:
    """Whether the process that writes ``path`` may still be running."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would stop the process there: go by age instead
        return time.time() - path.stat().st_mtime < 24 * 3600
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: leave its file
    return True


def clean_leftovers(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Remove the temporary files of killed writers under ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for candidate in folder.rglob(".*.partial") if recursive else folder.glob(".*.partial"):
        match = _LEFTOVER.match(candidate.name)
        if match and candidate.is_file() and not _alive(int(match.group(1)), candidate):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed
