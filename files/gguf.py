"""Reading GGUF files (llama.cpp's format) as ``{key: TensorRef}``, with the ``gguf`` package.

Diffusion-model GGUF files as city96's ComfyUI-GGUF converter writes them (``tools/convert.py``
in github.com/city96/ComfyUI-GGUF), which is how the community's NewBie / Lumina-2 files are
made: tensor names are the safetensors keys (its converter strips ``model.diffusion_model.``),
``general.architecture`` names the model family (``lumina2`` for this one), small tensors are
F32/F16/BF16, the rest in a ggml block format. GGUF lists dimensions innermost first, so the
torch shape is the reverse; a tensor the converter reshaped into rows of 256 (done for some
convolution models, never for ``lumina2``) records its original shape in the array field
``comfy.gguf.orig_shape.<name>``.

Plain F32/F16/BF16 tensors are ordinary TensorRefs (a memory map of the file when read in their
own dtype on the CPU). Block-quantised tensors carry ``ref.packed``: a loader that keeps them
quantised reads the raw blocks; ``ref.load`` dequantises.

Refused, naming the file: not a GGUF, a truncated file, a tensor in a format the pack does not
read, and a tensor whose byte count does not fit its shape. Which model family a file holds is
the caller's question (``architecture``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..quant.blocks import FORMATS, PACKED, dequantize
from .errors import WeightsError
from .refs import PackedData, TensorRef, prefault

ORIG_SHAPE_FIELD = "comfy.gguf.orig_shape."
_MAGIC = b"GGUF"
_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class _Unreadable(Exception):
    """Raised by `_checked_reader` before the gguf package trips over a bad tensor."""


def _checked_reader(path: Path):
    """A gguf.GGUFReader (copy-on-write map) that first checks every tensor's type and extent."""
    import gguf

    class Checked(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            size = len(self.data)
            for field in fields:
                _, name, _, dims, raw_type, offset = field.parts
                name = bytes(name).decode("utf-8", "replace")
                type_id = int(raw_type[0])
                try:
                    qtype = gguf.GGMLQuantizationType(type_id)
                except ValueError:
                    raise _Unreadable(f"tensor {name!r} has quantisation type {type_id}, which no GGUF "
                                      f"reader knows; the file is damaged or from a newer tool") from None
                if qtype.name not in FORMATS:
                    raise _Unreadable(f"tensor {name!r} is stored as {qtype.name}, which this pack does not "
                                      f"read (it reads {', '.join(FORMATS)}); convert the model again with "
                                      f"one of these types")
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
                n = math.prod(int(d) for d in dims)
                if n % block or int(dims[0]) % block:
                    raise _Unreadable(f"tensor {name!r}: shape {list(reversed(dims.tolist()))} does not split "
                                      f"into {qtype.name} blocks of {block}")
                end = start_offs + int(offset[0]) + n // block * type_size
                if end > size:
                    raise _Unreadable(f"truncated: tensor {name!r} ends at byte {end} but the file has only "
                                      f"{size} bytes; download it again")
            return super()._build_tensors(start_offs, fields)

    return Checked(str(path), "c")


def _open_reader(path: Path):
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != _MAGIC:
        raise WeightsError(path, "not a GGUF file (it does not start with 'GGUF'); the file is damaged "
                                 "or has the wrong extension")
    try:
        return _checked_reader(path)
    except _Unreadable as error:
        raise WeightsError(path, str(error)) from None
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError) as error:
        raise WeightsError(path, f"truncated or damaged GGUF header ({error}); download the file "
                                 f"again") from None


def string_field(reader, name: str) -> str | None:
    field = reader.get_field(name)
    if field is None or not field.data:
        return None
    try:
        return bytes(field.parts[field.data[-1]]).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        return None


def _orig_shape(reader, path: Path, name: str) -> tuple[int, ...] | None:
    field = reader.get_field(ORIG_SHAPE_FIELD + name)
    if field is None:
        return None
    try:
        return tuple(int(field.parts[i][0]) for i in field.data)
    except (IndexError, TypeError, ValueError):
        raise WeightsError(path, f"damaged metadata {ORIG_SHAPE_FIELD + name}: not a list of integers") from None


def fields(path, prefixes: tuple[str, ...]) -> dict:
    """The metadata fields of the GGUF at ``path`` whose names start with one of ``prefixes``, as
    Python values (numbers, strings, bools; arrays as lists, except arrays of more than 4096
    entries, such as a tokenizer's vocabulary, which are left out: read those with ``reader``)."""
    reader = _open_reader(Path(path))
    out = {}
    for name, field in reader.fields.items():
        if not name.startswith(prefixes) or len(field.data) > 4096:
            continue
        try:
            out[name] = field.contents()
        except (ValueError, IndexError, UnicodeDecodeError):
            raise WeightsError(Path(path), f"damaged metadata field {name!r}") from None
    return out


def architecture(path) -> str | None:
    """The file's ``general.architecture`` (None where it has none)."""
    return string_field(_open_reader(Path(path)), "general.architecture")


def open_gguf(path) -> dict[str, TensorRef]:
    """Every tensor of the GGUF file ``path`` as ``{name: TensorRef}`` (header only; data mapped)."""
    path = Path(path)
    reader = _open_reader(path)
    refs: dict[str, TensorRef] = {}
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        stored = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        shape = _orig_shape(reader, path, tensor.name) or stored
        if math.prod(shape) != math.prod(stored):
            raise WeightsError(path, f"tensor {tensor.name!r}: its recorded original shape {list(shape)} "
                                     f"does not hold its {math.prod(stored)} elements")
        refs[tensor.name] = _ref(path, tensor.data, qtype, shape)
    return refs


def _ref(path: Path, array, qtype: str, shape: tuple[int, ...]) -> TensorRef:
    raw = torch.from_numpy(array).view(torch.uint8)   # a private map of the file's bytes

    def bytes_on(device, own=False):
        if own or (device is not None and device.type != "cpu"):
            return raw.to(device=device, copy=True)
        prefault(raw)
        return raw

    if qtype in _PLAIN:
        dtype = _PLAIN[qtype]

        def read_plain(want, device, own):
            if want in (None, dtype) and not own and (device is None or device.type == "cpu"):
                return bytes_on(None).view(dtype).reshape(shape)
            return bytes_on(None, own=True).view(dtype).reshape(shape).to(device=device, dtype=want or dtype)

        return TensorRef(path, shape, dtype, read_plain)

    assert qtype in PACKED
    rows = raw.reshape(-1, raw.shape[-1])

    def read_packed(want, device, own):
        return dequantize(rows.to(device) if device is not None else rows, qtype, shape, want or torch.float32)

    packed = PackedData(qtype, lambda device=None: bytes_on(device).reshape(rows.shape), tuple(rows.shape))
    return TensorRef(path, shape, torch.float32, read_packed, packed)


PACK_FIELD = "nextdit."   # string fields the quantize command copies from a safetensors __metadata__


def pack_metadata(path) -> dict[str, str]:
    """The ``nextdit.*`` string fields of a GGUF file, without the prefix."""
    reader = _open_reader(Path(path))
    out = {}
    for name in reader.fields:
        if name.startswith(PACK_FIELD):
            value = string_field(reader, name)
            if value is not None:
                out[name[len(PACK_FIELD):]] = value
    return out
