"""State-dict key helpers shared by every loader: prefix stripping, key lists grouped for
messages, and what a file looks like when it is not what was asked for.

Everything here works on key names (and, for detection, shapes) only.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Callable, Iterable, Mapping


def strip_leading(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without any run of the given prefixes, in any order (``module.module._orig_mod.x``)."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


# ---- grouped key lists for messages -----------------------------------------------------------

_INDEX = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")


def _ranges(numbers: Iterable[int]) -> str:
    """[0,1,2,3,7,9,10] -> '0-3,7,9-10'."""
    values = sorted(set(numbers))
    parts, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(parts)


def module_name(key: str) -> str:
    """'layers.3.attention.qkv.weight' -> 'layers.3.attention.qkv' (parameter name dropped)."""
    head, _, last = key.rpartition(".")
    return head if head and last in ("weight", "bias", "scale", "weight_scale") else key


def group_keys(keys: Iterable[str], limit: int = 12) -> list[str]:
    """Module paths with their layer indices folded into ranges, e.g.
    ['layers.0-35.attention.qkv', 'norm_final'] (at most `limit` lines, then a count)."""
    groups: dict[tuple[str, ...], list[tuple[int, ...]]] = defaultdict(list)
    for name in sorted({module_name(k) for k in keys}):
        numbers = tuple(int(n) for n in _INDEX.findall(name))
        pattern = tuple(_INDEX.split(name))
        groups[pattern].append(numbers)
    lines = []
    for pattern, index_sets in groups.items():
        columns = list(zip(*index_sets)) if index_sets and index_sets[0] else []
        text = pattern[0]
        for piece, column in zip(pattern[1:], columns):
            text += _ranges(column) + piece
        lines.append(text)
    lines.sort(key=_natural_key)
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def mismatch_lines(expected: Mapping[str, tuple], found: Mapping[str, tuple], limit: int = 12,
                   fits: Callable[[tuple, tuple], bool] | None = None,
                   missing_names: Callable[[set[str]], Iterable[str]] | None = None) -> list[str]:
    """What keeps a file's tensors (``found``: key -> shape) from loading into a model
    (``expected``), grouped by module: ``layers.0-35.attention.qkv: missing``, ``...: unexpected``,
    ``...: shape [a, b] in the file, [c, d] expected``. Empty when everything fits.

    ``fits(file_shape, model_shape)`` relaxes the shape test (default: equal);
    ``missing_names`` may rename the missing set before grouping (e.g. whole blocks).
    """
    fits = fits or (lambda have, want: tuple(have) == tuple(want))
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    wrong: dict[tuple[tuple, tuple], list[str]] = defaultdict(list)
    for key in set(expected) & set(found):
        if not fits(tuple(found[key]), tuple(expected[key])):
            wrong[(tuple(found[key]), tuple(expected[key]))].append(key)
    lines = [f"{g}: missing" for g in group_keys(missing_names(missing) if missing_names else missing, limit)]
    lines += [f"{g}: unexpected" for g in group_keys(unexpected, limit)]
    for (have, want), names in sorted(wrong.items()):
        lines += [f"{g}: shape {list(have)} in the file, {list(want)} expected" for g in group_keys(names, limit)]
    if len(lines) > 2 * limit:
        lines = lines[:2 * limit] + [f"... and {len(lines) - 2 * limit} more"]
    return lines


# ---- what a file looks like -------------------------------------------------------------------

def _any(keys: list[str], *needles: str) -> bool:
    return any(needle in key for key in keys for needle in needles)


def describe_contents(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short description of what a state dict holds, for error messages.

    `shapes` maps the file's original keys (prefixes kept) to tensor shapes.
    """
    keys = list(shapes)
    if not keys:
        return "no tensors at all (not a weights file)"
    if _any(keys, "lora_A", "lora_B", "lora_down", "lora_up", ".lora.", "lokr_", "hada_"):
        return "a LoRA (low-rank patch), not a full model: load the base model, then apply it with NextDiTLoraLoader"
    if _any(keys, "double_blocks.", "single_blocks.") or (
            _any(keys, "single_transformer_blocks.") and _any(keys, "transformer_blocks.")):
        return "a FLUX transformer, not a Next-DiT"
    if _any(keys, "joint_blocks.") and _any(keys, "x_block."):
        return "an SD3 transformer, not a Next-DiT"
    if _any(keys, "input_blocks.", "down_blocks.0.resnets.") and _any(keys, "time_embed.", "time_embedding."):
        kind = "SDXL" if _any(keys, "conditioner.embedders.1", "label_emb.") else "Stable Diffusion"
        return f"a {kind} UNet checkpoint, not a Next-DiT"
    vae = _describe_vae(shapes)
    if vae:
        return vae
    if _any(keys, "mixer.Wqkv", "text_model.encoder.layers") or (_any(keys, "roberta") and _any(keys, "Wqkv")):
        return "a Jina CLIP v2 text encoder: load it with NextDiTTextEncoderLoader (jina_name)"
    if _any(keys, "post_feedforward_layernorm") and _any(keys, "self_attn.q_norm"):
        return "a Gemma 3 text encoder: load it with NextDiTTextEncoderLoader (gemma_name)"
    if _any(keys, "embed_tokens.", "token_embedding.", "shared.weight", "encoder.block."):
        return "a text encoder (language model), not a diffusion model"
    if _any(keys, "cap_embedder.", "x_embedder.") and _any(keys, "layers."):
        return "a Next-DiT checkpoint (NewBie / Lumina-2 layout)"
    if _any(keys, "time_caption_embed.", "attn.to_q"):
        return "a diffusers Lumina-2 transformer"
    sample = ", ".join(group_keys(keys, limit=4))
    return f"an unrecognised model ({len(keys)} tensors, e.g. {sample})"


def _describe_vae(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """BFL/LDM (`encoder.down.0.block...`) or diffusers (`encoder.down_blocks...`) VAE layouts."""
    keys = [k for k in shapes if "encoder." in k or "decoder." in k]
    if not _any(keys, "decoder."):
        return None
    if not (_any(keys, "encoder.conv_in.") and _any(keys, "decoder.conv_out.")):
        if all(k.split(".", 1)[0] in ("encoder", "decoder", "vae", "first_stage_model") for k in shapes):
            return "an image encoder/decoder (e.g. a tiny VAE decoder): load it with NextDiTVAELoader"
        return None
    latent = next((shape for key, shape in shapes.items() if key.endswith("decoder.conv_in.weight")), None)
    channels = latent[1] if latent and len(latent) == 4 else None
    if channels == 16:
        return "a FLUX VAE (16 latent channels): load it with NextDiTVAELoader"
    detail = f" ({channels} latent channels)" if channels else ""
    return f"a VAE{detail}, not a diffusion model"
