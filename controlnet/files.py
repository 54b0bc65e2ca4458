"""Loading and saving a Next-DiT ControlNet (the key layout is in controlnet/model.py).

Loading reads the headers first: a file of another ControlNet family, another kind of model, or
a truncated file is refused with a WeightsError naming what it is, before any tensor is read.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from ..dit.keys import strip_prefixes
from ..files import keys as key_lists
from ..files.errors import WeightsError
from ..files.tensors import open_weights, read_metadata
from .model import LATENT_CHANNELS, ControlNetParams, NextDiTControlNet

log = logging.getLogger(__name__)

META_LAYERS = "nextdit_controlnet_layers"
META_CONTROL = "nextdit_controlnet_control"
META_BASE = "nextdit_controlnet_base"
META_TRAINING = "nextdit_controlnet_training"
META_FORMAT = "nextdit_controlnet"
_MAX_ERROR_LINES = 14

# Other ControlNet families, by keys only they have, checked in this order: (needles, what it is).
_FAMILIES = (
    (("control_all_x_embedder", "control_layers.", "control_noise_refiner."),
     "a Z-Image Fun ControlNet (control_layers): it is made for Z-Image, not for NewBie / Lumina-2"),
    (("controlnet_x_embedder", "controlnet_single_blocks.", "double_blocks."),
     "a FLUX ControlNet (controlnet_x_embedder / controlnet_blocks)"),
    (("pos_embed_input",), "an SD3 ControlNet (pos_embed_input / controlnet_blocks)"),
    (("zero_convs.", "input_blocks.", "controlnet_cond_embedding.", "controlnet_down_blocks.", "input_hint_block."),
     "a Stable Diffusion / SDXL ControlNet (input_blocks / zero_convs)"),
    (("lora_A", "lora_B", "lora_down", "lora_up"), "a LoRA, not a ControlNet"),
)


def describe_other(keys: list[str]) -> str:
    """What a file that is not a Next-DiT ControlNet holds."""
    for needles, what in _FAMILIES:
        if any(needle in key for key in keys for needle in needles):
            return what
    return key_lists.describe_contents({k: () for k in keys})


def _count(keys, stem: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(rf"{stem}\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def infer_params(state: Mapping, metadata: Mapping[str, str], path) -> ControlNetParams:
    """ControlNetParams from the shapes (and the optional layer list in the metadata)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise WeightsError(path, f"a Next-DiT ControlNet needs {key}, which the file lacks; "
                                     "the file is incomplete or damaged")
        return tuple(state[key].shape)

    dim, patch_in = shape("control_x_embedder.weight")
    head_dim = shape("control_blocks.0.attention.q_norm.weight")[0]
    qkv_rows = shape("control_blocks.0.attention.qkv.weight")[0]
    ffn_dim = shape("control_blocks.0.feed_forward.w1.weight")[0]
    n_blocks = _count(state, "control_blocks")
    patch = round((patch_in / LATENT_CHANNELS) ** 0.5)
    n_heads, rest = divmod(dim, head_dim)
    kv_total = qkv_rows // head_dim - n_heads
    if rest or qkv_rows % head_dim or kv_total <= 0 or kv_total % 2 or patch * patch * LATENT_CHANNELS != patch_in:
        raise WeightsError(path, f"not a ControlNet shape this loader knows: width {dim}, head size {head_dim}, "
                                 f"qkv rows {qkv_rows}, patch input {patch_in}")
    layers = None
    if metadata.get(META_LAYERS):
        try:
            layers = tuple(int(part) for part in metadata[META_LAYERS].split(","))
        except ValueError:
            raise WeightsError(path, f"its metadata {META_LAYERS}={metadata[META_LAYERS]!r} is not a "
                                     f"comma-separated list of layer numbers") from None
    try:
        return ControlNetParams(dim=dim, n_heads=n_heads, n_kv_heads=kv_total // 2, ffn_dim=ffn_dim,
                                n_blocks=n_blocks, patch_size=patch, layers=layers)
    except ValueError as error:
        raise WeightsError(path, f"not a ControlNet shape this loader knows: {error}") from None


def load_controlnet(path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A NextDiTControlNet (eval, no grad) from a .safetensors (or .pt) file; WeightsError, naming
    the file, for anything that is not a complete Next-DiT ControlNet."""
    path = Path(path)
    raw = open_weights(path)
    state, _ = strip_prefixes(raw)
    if "control_x_embedder.weight" not in state:
        raise WeightsError(path, f"not a Next-DiT ControlNet: the file looks like {describe_other(list(raw))}. "
                                 "Pick a ControlNet made for NewBie / Lumina-2 (train one with "
                                 "`python -m nextdit_nodes train-controlnet`).")
    metadata = read_metadata(path) if path.is_file() else {}
    params = infer_params(state, metadata, path)
    model = NextDiTControlNet(params, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    lines = key_lists.mismatch_lines(expected, {k: tuple(v.shape) for k, v in state.items()}, _MAX_ERROR_LINES)
    if lines:
        raise WeightsError(path, "does not hold a complete Next-DiT ControlNet:\n  " + "\n  ".join(lines)
                                 + "\nThe file is incomplete or damaged; download or train it again.")
    try:
        tensors = {key: state[key].load(dtype, device) for key in expected}
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsError(path, f"cannot read its tensors ({error}); the file is truncated or damaged") from None
    model.load_state_dict(tensors, strict=True, assign=True)
    model.metadata = dict(metadata)
    log.info("loaded ControlNet %s: %d blocks, width %d%s", path.name, params.n_blocks, params.dim,
             f", control {metadata[META_CONTROL]}" if metadata.get(META_CONTROL) else "")
    return model.eval().requires_grad_(False)


def save_controlnet(path, net: NextDiTControlNet, *, control: str | None = None, base: str | None = None,
                    training: str | None = None, metadata: Mapping[str, str] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``net`` as .safetensors with its metadata (written under a temporary name, then renamed)."""
    from safetensors.torch import save_file

    path = Path(path)
    info = {META_FORMAT: "1", META_LAYERS: ",".join(map(str, net.params.layers)) if net.params.layers else ""}
    for key, value in ((META_CONTROL, control), (META_BASE, base), (META_TRAINING, training)):
        if value:
            info[key] = str(value)
    info.update({str(k): str(v) for k, v in (metadata or {}).items()})
    info = {k: v for k, v in info.items() if v}
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous().clone() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=info)
    partial.replace(path)
    return path
