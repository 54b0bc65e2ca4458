"""Reading tensors from any file layout users have, without interpreting the keys.

Layouts: one ``.safetensors``/``.sft`` file, sharded safetensors with an index, a folder holding
either (HF / diffusers layouts, optionally under a sub-folder such as ``transformer/``), and
``.pt/.pth/.ckpt/.bin`` through ``torch.load(weights_only=True)`` (training checkpoints that nest
the weights under ``ema``/``model``/``state_dict``/``module`` are unwrapped). Key normalisation is
the caller's job (each model's own key module).

Two entry points:
- ``open_weights(path)`` -> ``{key: TensorRef}``: shapes and dtypes from the file header only, so
  a caller can validate everything before reading a byte of data, then read each tensor straight
  into its final dtype (``ref.load(dtype, device)``).
- ``read_state_dict(path)`` -> ``{key: Tensor}``: the same, all loaded.

How data is read, so that the weights never exist twice in memory:
- wanted in the file's own dtype on the CPU: the tensor is a private (copy-on-write) memory map of
  the file, paged in at once (``refs.prefault``). No copy at all; writing into it never touches the file.
- wanted in another dtype or on another device: the bytes are read with plain file reads into a
  buffer for this one tensor, converted, and the buffer dropped, so no mapping of the whole file
  stays resident next to the converted weights.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from pathlib import Path

import torch

from .errors import WeightsError
from .refs import TensorRef, prefault

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
GGUF_SUFFIX = ".gguf"   # llama.cpp's format (files/gguf.py)
# Containers training scripts nest their weights in, in order of preference. EMA weights come
# first: they are the ones meant for inference (the official trainer saves `consolidated_ema`
# separately for that reason), so a checkpoint holding both yields its EMA weights.
NESTING_KEYS = ("ema", "model_ema", "ema_model", "state_dict_ema", "model", "state_dict", "module", "net")
_MAX_HEADER_BYTES = 100 * 1024 * 1024   # the format's own limit
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def open_weights(path, subfolder: str | None = None) -> dict[str, TensorRef]:
    """Every tensor of ``path`` (file, index or folder) as ``{key: TensorRef}``; reads headers only."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(path, "no such file or folder")
    if path.is_dir():
        return _open_folder(path, subfolder)
    if path.name.endswith(".index.json"):
        return _open_sharded(path)
    suffix = path.suffix.lower()
    if suffix == GGUF_SUFFIX:
        from .gguf import open_gguf
        return open_gguf(path)
    if suffix in SAFETENSORS_SUFFIXES:
        return _open_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(path)
    raise WeightsError(path, f"unknown weight file extension {path.suffix!r}; expected one of "
                             f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES + (GGUF_SUFFIX,))} or a folder")


def read_state_dict(path, subfolder: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of ``path`` as ``{key: tensor}`` in the file's dtypes (safetensors data is a
    private memory map of the file, already paged in)."""
    return {key: ref.load() for key, ref in open_weights(path, subfolder).items()}


def read_metadata(path) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file; the pack's own string fields of a GGUF
    file; for a zip-format PyTorch checkpoint the string entries of its top-level ``metadata``
    dict (a training checkpoint has no header, so the pack's own checkpoints keep their records
    there); {} for other layouts."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        from .gguf import pack_metadata
        return pack_metadata(path)
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        import zipfile

        if not zipfile.is_zipfile(path):
            return {}
        data = _safe_torch_load(path)     # memory-mapped: the tensors are not read
        found = data.get("metadata") if isinstance(data, dict) else None
        return {str(k): v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}
    if not (path.is_file() and path.suffix.lower() in SAFETENSORS_SUFFIXES):
        return {}
    header, _ = _read_safetensors_header(path)
    return dict(header.get("__metadata__") or {})


# ---- safetensors ------------------------------------------------------------------------------

def _describe_non_weights(path: Path, head: bytes) -> str | None:
    """What a file that is not a safetensors file looks like, from its first bytes."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<head", b"<?xml", b"<")):
        return ("an HTML/XML page, not weights (a download that saved a web page, e.g. a login, "
                "error or 'file too large' page); download the file again from its direct link")
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights; fetch the real file (git lfs pull)"
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch zip checkpoint with a .safetensors name; rename it to .pt"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle with a .safetensors name; rename it to .pt"
    if head[:1] in (b"{", b"["):
        return "a JSON file, not weights"
    return None


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict, offset of the data section). Raises WeightsError for anything malformed."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise WeightsError(path, f"not a weights file: only {size} bytes long")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            handle.seek(0)
            what = _describe_non_weights(path, handle.read(256))
            if what is None and header_len <= _MAX_HEADER_BYTES:
                raise WeightsError(path, f"truncated: the header alone needs {8 + header_len} bytes but "
                                         f"the file has {size}; download it again")
            raise WeightsError(path, f"not a safetensors file: it looks like {what or 'something else'}")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        what = _describe_non_weights(path, head + raw[:248])
        raise WeightsError(path, f"not a safetensors file: it looks like {what}" if what else
                                 f"not a readable safetensors file (header: {error}); the file is "
                                 f"damaged or not a weights file") from error
    data_start = 8 + header_len
    data_size = size - data_start
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
        except (KeyError, TypeError, ValueError) as error:
            raise WeightsError(path, f"damaged safetensors header at tensor {key!r} ({error!r})") from error
        if end > data_size:
            raise WeightsError(path, f"truncated: tensor {key!r} ends at byte {data_start + end} but the "
                                     f"file has only {size} bytes; download it again")
        if end - begin != numel * dtype.itemsize:
            raise WeightsError(path, f"damaged safetensors header: tensor {key!r} has {end - begin} bytes "
                                     f"for shape {info['shape']} {info['dtype']}")
    return header, data_start


def _read_exact(path: Path, offset: int, out: torch.Tensor) -> None:
    """Fill the uint8 tensor ``out`` with bytes of ``path`` from ``offset`` (plain reads, no mmap)."""
    view = memoryview(out.numpy()).cast("B")
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        done = 0
        while done < len(view):
            got = handle.readinto(view[done:])
            if not got:
                raise WeightsError(path, f"truncated: expected {len(view)} bytes at offset {offset}, "
                                         f"got {done}; download the file again")
            done += got


class _SafetensorsFile:
    """Reads tensors of one safetensors file. On first use it maps the file and creates the views
    of all its tensors at once: that lets the OS read ahead through the whole file while the
    tensors are paged in one by one (view-then-page-in per tensor runs about 3x slower cold)."""

    def __init__(self, path: Path, data_start: int):
        self.path, self.data_start = path, data_start
        self._views: dict[str, torch.Tensor] | None = None
        self._lock = threading.Lock()   # one map per file, even when threads read concurrently

    def mapped(self, key: str) -> torch.Tensor:
        with self._lock:
            if self._views is None:
                from safetensors import safe_open

                try:
                    with safe_open(str(self.path), framework="pt") as handle:
                        self._views = {name: handle.get_tensor(name) for name in handle.keys()}
                except Exception as error:  # noqa: BLE001 - its own stricter checks failed
                    raise WeightsError(self.path, f"not a readable safetensors file ({error})") from error
            # Handed out once: the ref keeps no copy, so a dropped tensor frees its pages.
            tensor = self._views.pop(key) if key in self._views else self._views_again(key)
        prefault(tensor)
        return tensor

    def _views_again(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(key)

    def read(self, begin: int, end: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        if end > begin:
            _read_exact(self.path, self.data_start + begin, buffer)
        return buffer.view(dtype).reshape(shape)


def _open_safetensors(path: Path) -> dict[str, TensorRef]:
    header, data_start = _read_safetensors_header(path)
    source = _SafetensorsFile(path, data_start)
    refs = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype, shape = _SAFETENSORS_DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"])

        def reader(want, device, own, key=key, begin=begin, end=end, dtype=dtype, shape=shape):
            if not own and want in (None, dtype) and (device is None or device.type == "cpu"):
                return source.mapped(key)
            return source.read(begin, end, dtype, shape).to(device=device, dtype=want or dtype)

        refs[key] = TensorRef(path, shape, dtype, reader)
    return refs


# ---- sharded files and folders ----------------------------------------------------------------

def _open_sharded(index_path: Path) -> dict[str, TensorRef]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(index_path, f"not a sharded-weights index ({error!r})") from error
    refs: dict[str, TensorRef] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise WeightsError(index_path, f"shard {shard!r} listed in the index is missing; "
                                           f"download every shard next to the index")
        refs.update(open_weights(shard_path))
    absent = sorted(set(weight_map) - set(refs))
    if absent:
        raise WeightsError(index_path, f"{len(absent)} tensors listed in the index are in no shard "
                                       f"(first: {absent[0]!r}); a shard is damaged or from another version")
    return refs


def _open_folder(folder: Path, subfolder: str | None) -> dict[str, TensorRef]:
    if subfolder and (folder / subfolder).is_dir():
        folder = folder / subfolder
    for pattern in ("*.safetensors.index.json", "*.safetensors", "*.sft", "*.bin.index.json",
                    "*.bin", "*.pth", "*.pt", "*.ckpt"):
        matches = sorted(folder.glob(pattern))
        if matches:
            if pattern.endswith(".index.json"):
                return _open_sharded(matches[0])
            refs: dict[str, TensorRef] = {}
            for match in matches:
                refs.update(open_weights(match))
            return refs
    where = f" (nor in a {subfolder}/ sub-folder)" if subfolder else ""
    raise WeightsError(folder, f"folder holds no weight files (.safetensors, .bin, .pth, .pt, .ckpt){where}")


# ---- pickles ----------------------------------------------------------------------------------

def _open_pickle(path: Path) -> dict[str, TensorRef]:
    data = _safe_torch_load(path)
    state = _find_state_dict(data)
    if state is None:
        keys = f" with keys {', '.join(map(repr, list(data)[:8]))}" if isinstance(data, dict) else ""
        raise WeightsError(path, f"holds no tensors by name (a {type(data).__name__}{keys})")
    return {key: TensorRef.of(tensor, path) for key, tensor in state.items()}


def _safe_torch_load(path: Path):
    import argparse
    import zipfile

    # Training checkpoints carry their argparse options next to the weights; that type is harmless.
    allowed = [argparse.Namespace]
    try:
        with torch.serialization.safe_globals(allowed):
            # mmap (zip format only) avoids holding the raw file next to the tensors.
            return torch.load(str(path), map_location="cpu", weights_only=True,
                              mmap=zipfile.is_zipfile(path))
    except Exception as error:  # noqa: BLE001 - every failure here means "not loadable as plain weights"
        needs = _globals_needing_code(path, allowed)
        if needs:
            raise WeightsError(path, f"refused: unpickling this file would import and run code "
                                     f"({', '.join(needs[:5])}). Only plain tensor checkpoints are "
                                     f"loaded (torch.load weights_only=True), so the code never runs. "
                                     f"If you trust the file, convert it to .safetensors with the tool "
                                     f"that made it.") from error
        with open(path, "rb") as handle:
            what = _describe_non_weights(path, handle.read(256))
        if what and "name" in what:     # pickle/zip signatures are what a .pt file should have
            what = None
        raise WeightsError(path, f"not a readable PyTorch checkpoint ({what or error}); the file may be "
                                 f"truncated or not a weights file at all: download it again") from error


def _globals_needing_code(path: Path, allowed: list) -> list[str]:
    """Names of the non-allowed globals a pickle references, found without unpickling it."""
    import zipfile

    allowed_names = {f"{cls.__module__}.{cls.__qualname__}" for cls in allowed}
    if zipfile.is_zipfile(path):
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - an unreadable file has no list; the caller says so
            return []
    else:
        found = [name for name in _raw_pickle_globals(path) if not _torch_allows(name)]
    return [name for name in found if name not in allowed_names]


def _raw_pickle_globals(path: Path) -> list[str]:
    """Globals named by the opcodes of a legacy (non-zip) pickle file, read without executing it."""
    import pickletools

    names: list[str] = []
    with open(path, "rb") as handle:
        for _ in range(8):    # the legacy torch format is a few pickles back to back, then raw data
            strings: list[str] = []
            try:
                for opcode, arg, _pos in pickletools.genops(handle):
                    if opcode.name == "GLOBAL":
                        names.append(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # noqa: BLE001 - end of the pickles (raw tensor bytes follow)
                break
    return names


def _torch_allows(name: str) -> bool:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        return name in _get_allowed_globals()
    except ImportError:   # private helper gone in some torch version: judge by module
        return name.startswith(("torch.", "collections.OrderedDict"))


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj, depth: int = 0) -> dict[str, torch.Tensor] | None:
    """The tensors of a checkpoint: the top-level dict, or the one nested under NESTING_KEYS."""
    if not isinstance(obj, dict) or depth > 3:
        return None
    for key in NESTING_KEYS:
        inner = _find_state_dict(obj.get(key), depth + 1)
        if inner is not None:
            if depth == 0:
                log.info("checkpoint nests its weights; using the %r entry", key)
            return inner
    if _is_tensor_dict(obj):
        return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return None
