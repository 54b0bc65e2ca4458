"""Reading a state dict from any file layout users have, without interpreting the keys.

Layouts: one ``.safetensors``/``.sft`` file, sharded safetensors with an index, a folder holding
either (HF / diffusers layouts, optionally under a sub-folder), and ``.pt/.pth/.ckpt/.bin`` through
``torch.load(weights_only=True)``. Key normalisation is the caller's job (``loaders/keys.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import WeightsError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def read_state_dict(path, subfolder: str | None = None) -> dict:
    """All tensors of ``path`` as ``{key: tensor}`` (safetensors tensors are memory-mapped)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(path, "no such file or folder")
    if path.is_dir():
        return _read_folder(path, subfolder)
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise WeightsError(path, f"unknown weight file extension {path.suffix!r}; expected one of "
                             f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)} or a folder")


def read_metadata(path) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file ({} for other layouts)."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() in SAFETENSORS_SUFFIXES):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # noqa: BLE001 - any parse failure is a bad file
        raise WeightsError(path, f"not a readable safetensors file ({error})") from error


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # noqa: BLE001
        raise WeightsError(path, f"not a readable safetensors file ({error}); the file may be "
                                 f"truncated or not a weights file at all: download it again") from error


def _read_sharded(index_path: Path) -> dict:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError) as error:
        raise WeightsError(index_path, f"not a sharded-weights index ({error})") from error
    state = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_state_dict(index_path.parent / shard))
    return state


def _read_folder(folder: Path, subfolder: str | None) -> dict:
    if subfolder and (folder / subfolder).is_dir():
        folder = folder / subfolder
    for pattern in ("*.safetensors.index.json", "*.safetensors", "*.sft", "*.bin.index.json",
                    "*.bin", "*.pth", "*.pt", "*.ckpt"):
        matches = sorted(folder.glob(pattern))
        if matches:
            if pattern.endswith(".index.json"):
                return _read_sharded(matches[0])
            state = {}
            for match in matches:
                state.update(read_state_dict(match))
            return state
    raise WeightsError(folder, "folder holds no weight files (.safetensors, .bin, .pth, .pt, .ckpt)")


def _read_pickle(path: Path) -> dict:
    import argparse

    import torch

    # Training checkpoints carry their argparse options next to the weights; that type is harmless.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as error:  # noqa: BLE001
        raise WeightsError(path, f"cannot be read safely as weights: {error}. Only plain tensor "
                                 f"checkpoints are loaded (torch.load weights_only=True); a file "
                                 f"that needs code to unpickle is refused. Convert it to "
                                 f".safetensors with the tool that made it.") from error
    if not isinstance(data, dict):
        raise WeightsError(path, f"holds a {type(data).__name__}, not a dict of tensors")
    return data
