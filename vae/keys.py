"""VAE state-dict keys: picking the VAE out of a file, telling its layout, renaming to diffusers.

Layouts:
- ``ldm``: BFL ``ae.safetensors`` / LDM names (``decoder.up.{i}.block.{j}``, ``mid.attn_1.q`` …);
- ``diffusers_kl``: ``AutoencoderKL`` names (``decoder.up_blocks.{i}.resnets.{j}`` …; diffusers'
  ``convert_ldm_vae_checkpoint`` maps one to the other, decoder levels numbered the other way);
- ``taesd``: the original TAESD/TAEF1 ``nn.Sequential`` indices (``1.weight``, ``3.conv.0.weight``;
  github.com/madebyollin/taesd ``taesd.py``);
- ``diffusers_tiny``: ``AutoencoderTiny`` names (``decoder.layers.{i}`` …).
All-in-one checkpoints carry the VAE under ``first_stage_model.`` or ``vae.``. Everything here is
plain dict work on names: values (tensors or ``files.TensorRef``) pass through untouched, and only
their ``.shape`` is looked at.
"""

from __future__ import annotations

import re

VAE_PREFIXES = ("first_stage_model.", "vae.")
# Whole-model wrappers (DDP, torch.compile) that may precede any key.
_WRAPPERS = ("module.", "_orig_mod.")


def _unwrap(key: str) -> str:
    while key.startswith(_WRAPPERS):
        key = key.split(".", 1)[1]
    return key


def select_vae_keys(state: dict) -> dict:
    """The VAE's own keys: the part under an all-in-one prefix if there is one, else everything
    (DDP / torch.compile wrappers stripped either way)."""
    state = {_unwrap(key): value for key, value in state.items()}
    for prefix in VAE_PREFIXES:
        part = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if part:
            return part
    return state


def detect_layout(state: dict) -> str | None:
    """``ldm`` | ``diffusers_kl`` | ``taesd`` | ``diffusers_tiny``, or None for anything else."""
    keys = state.keys()
    if any(k.startswith(("decoder.up_blocks.", "decoder.mid_block.")) for k in keys):
        return "diffusers_kl"
    if any(k.startswith(("decoder.up.", "decoder.mid.block_1.")) for k in keys):
        return "ldm"
    if any(k.startswith(("decoder.layers.", "encoder.layers.")) for k in keys):
        return "diffusers_tiny"
    weights = [k for k in keys if k not in _TAESD_DROPPED]
    if weights and all(_TAESD_KEY.match(k) for k in weights):
        return "taesd"
    return None


# Original TAESD files: bare Sequential indices, or under the halves' names used by wrappers.
_TAESD_KEY = re.compile(r"^(?:(?:taesd_)?(?:encoder|decoder)\.)?\d+\.")
_TAESD_DROPPED = ("vae_scale", "vae_shift")  # ComfyUI wrapper scalars, not weights


def taesd_to_diffusers(state: dict) -> dict:
    """Sequential indices → ``AutoencoderTiny`` names.

    A bare-index file is one half, told apart by its first layer: the encoder starts with a conv
    on 3 image channels at index 0; the decoder's index 0 is the weightless clamp, so its first
    weight is ``1.weight``. Decoder index i becomes ``decoder.layers.{i-1}`` (diffusers applies
    the clamp outside its Sequential); encoder indices are unchanged.
    """
    out = {}
    for key, value in state.items():
        if key in _TAESD_DROPPED:
            continue
        head, _, rest = key.partition(".") if not key[0].isdigit() else ("", "", key)
        if head.startswith("taesd_"):
            head = head[len("taesd_"):]
        if not head:
            head = "encoder" if "0.weight" in state and state["0.weight"].shape[1] == 3 else "decoder"
        index, _, tail = rest.partition(".")
        if head == "decoder":
            out[f"decoder.layers.{int(index) - 1}.{tail}"] = value
        else:
            out[f"encoder.layers.{index}.{tail}"] = value
    return out


def ldm_to_diffusers(state: dict) -> dict:
    """BFL/LDM autoencoder names → ``AutoencoderKL`` names (unknown keys pass through unchanged,
    so a strict load reports them). Decoder levels are numbered the other way round in diffusers.
    The mid-block attention's q/k/v/proj_out are 1×1 convs [C,C,1,1] here and linear [C,C] there:
    the loader squeezes them when it reads the data."""
    up_levels = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    last_up = max(up_levels, default=-1)
    out = {}
    for key, value in state.items():
        new = _rename_ldm_key(key, last_up)
        out[new if new is not None else key] = value
    return out


_RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                 "nin_shortcut": "conv_shortcut"}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _rename_ldm_key(key: str, last_up: int) -> str | None:
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(weight|bias)", key):
        part = "conv_norm_out" if m.group(2) == "norm_out" else m.group(2)
        return f"{m.group(1)}.{part}.{m.group(3)}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
        if m.group(3) in _RESNET_PARTS:
            return (f"encoder.down_blocks.{m.group(1)}.resnets.{m.group(2)}."
                    f"{_RESNET_PARTS[m.group(3)]}.{m.group(4)}")
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key):
        return f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
        if m.group(3) in _RESNET_PARTS:
            return (f"decoder.up_blocks.{last_up - int(m.group(1))}.resnets.{m.group(2)}."
                    f"{_RESNET_PARTS[m.group(3)]}.{m.group(4)}")
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key):
        return f"decoder.up_blocks.{last_up - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key):
        if m.group(3) in _RESNET_PARTS:
            return (f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}."
                    f"{_RESNET_PARTS[m.group(3)]}.{m.group(4)}")
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)", key):
        if m.group(2) in _ATTN_PARTS:
            return f"{m.group(1)}.mid_block.attentions.0.{_ATTN_PARTS[m.group(2)]}.{m.group(3)}"
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    return None
