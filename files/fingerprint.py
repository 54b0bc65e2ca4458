"""Telling weight files (and folders of them) apart by content: a full SHA-256, or a quick
fingerprint for cache keys.

The fingerprint hashes each file's size with its first and last MiB: a safetensors header (every
name, dtype, shape and offset) is at the start, and two different trainings of the same
architecture differ in the data at either end. It reads 2 MiB of a multi-GB encoder instead of all
of it, so a cache lookup costs no full read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_EDGE = 1 << 20


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def fingerprint(path: str | Path) -> str:
    """Quick content fingerprint of a file or folder (hex, 16 characters)."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in _files(path):
        size = file.stat().st_size
        name = "" if file == path else file.relative_to(path).as_posix()   # a file's own name is no content
        digest.update(f"{name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(_EDGE))
            if size > 2 * _EDGE:
                handle.seek(size - _EDGE)
                digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:16]
