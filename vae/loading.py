"""Loading a VAE file as a NEXTDIT_VAE: the FLUX autoencoder or the TAEF1 tiny decoder.

The kind comes from the key names (``keys.detect_layout``), the diffusers config from tensor
shapes. What shapes cannot tell comes from the file: the safetensors ``__metadata__`` keys
``latent_scale`` / ``latent_shift`` (``vae/latent_format.py``) and ``norm_num_groups``, or for a
diffusers folder its ``config.json`` (``norm_num_groups``; ``scaling_factor`` / ``shift_factor``
when ``shift_factor`` is set). Defaults are FLUX's: constants 0.3611 / 0.1159, GroupNorm 32.
Anything that is not a usable VAE raises ``WeightsError``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .. import dtypes
from ..files.errors import WeightsError
from ..files.keys import describe_contents, mismatch_lines
from ..files.tensors import open_weights, read_metadata
from .keys import detect_layout, ldm_to_diffusers, select_vae_keys, taesd_to_diffusers
from .latent_format import METADATA_SCALE_KEY, METADATA_SHIFT_KEY, latent_format_from_metadata
from .model import NextDiTVAE, VAEInfo

# LDM/FLUX autoencoders use GroupNorm(32, C) everywhere; the group count is not in the weights,
# so a VAE built otherwise must say so in its metadata or config.json.
NORM_GROUPS = 32
METADATA_NORM_GROUPS_KEY = "norm_num_groups"
FLUX_LATENT_CHANNELS = 16
# Peak activation memory of an untiled decode per image pixel, in units of the widest
# full-resolution channel count (elements). Measured on the CPU (VmHWM over the decode): full-size
# FLUX widths 3.8 at 512² (benchmarks/vae.py), TAESD 4.1 at 512² and 1024²; rounded up.
KL_PEAK_FACTOR = 4.0
TINY_PEAK_FACTOR = 4.5

_LAYOUT_NAMES = {"ldm": "FLUX autoencoder (BFL/LDM names)",
                 "diffusers_kl": "FLUX autoencoder (diffusers names)",
                 "taesd": "tiny autoencoder (TAESD indices)",
                 "diffusers_tiny": "tiny autoencoder (diffusers names)"}


def load_vae(path, device=None, dtype: str = "auto"):
    """A :class:`NextDiTVAE` from ``path`` (file, diffusers ``vae/`` folder, or a pipeline folder
    holding one), on ``device`` (default CPU) in ``dtype`` (``dtypes.DTYPES``; the VAE is not
    counted fp16-safe, so auto is bf16 on a GPU that supports it, else fp32)."""
    path = Path(path)
    # Headers only: the whole file is checked before any tensor data is read.
    refs = open_weights(path, subfolder="vae")
    state = select_vae_keys(refs)
    metadata = {**_folder_config(path), **read_metadata(path)}
    try:
        latent_format = latent_format_from_metadata(metadata)
        groups = int(metadata.get(METADATA_NORM_GROUPS_KEY, NORM_GROUPS))
    except ValueError as error:
        raise WeightsError(path, f"bad settings in the file's metadata / config.json: {error}") from None
    layout = detect_layout(state)
    if layout is None:
        what = describe_contents({key: ref.shape for key, ref in refs.items()})
        raise WeightsError(path, f"not a VAE: it looks like {what}. Expected the FLUX "
                                 f"autoencoder (ae.safetensors or a diffusers vae/ folder) or the "
                                 f"TAEF1 tiny decoder (taef1_decoder.pth / .safetensors).")
    device = torch.device(device or "cpu")
    torch_dtype = dtypes.resolve(dtype, device, fp16_safe=False)
    try:
        if layout in ("ldm", "diffusers_kl"):
            state = ldm_to_diffusers(state) if layout == "ldm" else state
            model, info = _build_kl(path, state, groups)
        else:
            state = taesd_to_diffusers(state) if layout == "taesd" else state
            model, info = _build_tiny(path, state)
    except KeyError as error:  # a tensor the config is read from is absent
        raise WeightsError(path, f"incomplete {_LAYOUT_NAMES[layout]}: {error.args[0]} is missing; "
                                 f"the file may be truncated") from None
    if info.latent_channels != FLUX_LATENT_CHANNELS and METADATA_SCALE_KEY not in metadata:
        raise WeightsError(path, f"a VAE with {info.latent_channels} latent channels (e.g. an SD / "
                                 f"SDXL VAE); NewBie's latents have {FLUX_LATENT_CHANNELS}: use the "
                                 f"FLUX.1 autoencoder ae.safetensors or TAEF1.")
    what = "FLUX-type autoencoder" if info.kind == "flux" else "tiny autoencoder (TAESD/TAEF1)"
    _load_strict(path, model, state, torch_dtype, what)
    model.to(device=device).eval().requires_grad_(False)
    return NextDiTVAE(model, latent_format, info)


def _folder_config(path: Path) -> dict[str, str]:
    """A diffusers folder's config.json settings, as metadata-style strings ({} for files)."""
    if not path.is_dir():
        return {}
    folder = path / "vae" if (path / "vae").is_dir() else path
    if not (folder / "config.json").is_file():
        return {}
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as error:
        raise WeightsError(folder / "config.json", f"not readable JSON ({error})") from None
    settings = {}
    if config.get("norm_num_groups") is not None:
        settings[METADATA_NORM_GROUPS_KEY] = str(config["norm_num_groups"])
    # diffusers' default config carries SD's 0.18215 and no shift: only a set shift means the
    # folder declares its own latent format (FLUX's vae/config.json does: 0.3611 / 0.1159).
    if config.get("shift_factor") is not None and config.get("scaling_factor") is not None:
        settings[METADATA_SCALE_KEY] = str(config["scaling_factor"])
        settings[METADATA_SHIFT_KEY] = str(config["shift_factor"])
    return settings


def _indices(state: dict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for key in state if (m := re.match(pattern, key))})


def infer_kl_config(path, state: dict, groups: int = NORM_GROUPS) -> dict:
    """``AutoencoderKL`` config from diffusers-named shapes (the decoder is required) and the
    GroupNorm group count, which shapes cannot tell."""
    up = _indices(state, r"decoder\.up_blocks\.(\d+)\.")
    if "decoder.conv_in.weight" not in state or not up:
        raise WeightsError(path, "an autoencoder without its decoder (decoder.conv_in / up blocks "
                                 "missing): the file is incomplete")
    # Decoder levels run from the widest to the full-resolution one; configs list them reversed.
    widths = [state[f"decoder.up_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in up][::-1]
    if groups <= 0 or any(w % groups for w in widths):
        raise WeightsError(path, f"channel counts {widths} are not multiples of {groups} "
                                 f"(GroupNorm groups): not an LDM/FLUX autoencoder, or its "
                                 f"'{METADATA_NORM_GROUPS_KEY}' setting is wrong")
    decoder_layers = len(_indices(state, r"decoder\.up_blocks\.0\.resnets\.(\d+)\."))
    has_encoder = "encoder.conv_in.weight" in state
    return dict(
        in_channels=state["encoder.conv_in.weight"].shape[1] if has_encoder else 3,
        out_channels=state["decoder.conv_out.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * len(widths),
        up_block_types=["UpDecoderBlock2D"] * len(widths),
        block_out_channels=widths,
        layers_per_block=decoder_layers - 1,  # the decoder has one block more per level
        latent_channels=state["decoder.conv_in.weight"].shape[1],
        norm_num_groups=groups,
        use_quant_conv="quant_conv.weight" in state,
        use_post_quant_conv="post_quant_conv.weight" in state,
        mid_block_add_attention="decoder.mid_block.attentions.0.to_q.weight" in state,
    )


def _build_kl(path, state: dict, groups: int):
    from diffusers import AutoencoderKL

    config = infer_kl_config(path, state, groups)
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    has_encoder = "encoder.conv_in.weight" in state
    if not has_encoder:  # decoder-only file: decode works, encode is refused
        model.encoder = None
        model.quant_conv = None
    widths = config["block_out_channels"]
    full_res_width = max(widths[:2])  # the last upsample runs at full resolution on widths[1]
    info = VAEInfo(kind="flux", latent_channels=config["latent_channels"],
                   downscale=2 ** (len(widths) - 1), can_encode=has_encoder,
                   decode_elements_per_pixel=KL_PEAK_FACTOR * full_res_width, source=path.name)
    return model, info


def _layer_kinds(state: dict, half: str) -> list[tuple[int, str]]:
    """(index, "conv" | "block") of the weighted layers of ``{half}.layers`` in order."""
    kinds = []
    for index in _indices(state, rf"{half}\.layers\.(\d+)\."):
        if f"{half}.layers.{index}.conv.0.weight" in state:
            kinds.append((index, "block"))
        elif f"{half}.layers.{index}.weight" in state:
            kinds.append((index, "conv"))
    return kinds


def infer_tiny_config(path, state: dict) -> dict:
    """``AutoencoderTiny`` config from diffusers-named shapes: stages are runs of blocks, closed by
    a conv in the decoder and opened by one in the encoder."""
    decoder = _layer_kinds(state, "decoder")
    if not decoder or decoder[0] != (0, "conv") or decoder[-1][1] != "conv":
        raise WeightsError(path, "a tiny autoencoder without a complete decoder (decoder.layers.0 "
                                 "conv … final conv): only TAEF1 decoders can be used")
    blocks, widths, run = [], [], 0
    for index, kind in decoder[1:]:
        if kind == "block":
            run += 1
            width = state[f"decoder.layers.{index}.conv.0.weight"].shape[0]
        else:
            blocks.append(run)
            widths.append(width if run else state[f"decoder.layers.{index}.weight"].shape[1])
            run = 0
    config = dict(latent_channels=state["decoder.layers.0.weight"].shape[1],
                  out_channels=state[f"decoder.layers.{decoder[-1][0]}.weight"].shape[0],
                  num_decoder_blocks=tuple(blocks), decoder_block_out_channels=tuple(widths))
    encoder = _layer_kinds(state, "encoder")
    if encoder:
        blocks, widths = [], []
        for index, kind in encoder[:-1]:  # the last conv maps to the latent channels
            if kind == "conv":
                blocks.append(0)
                widths.append(state[f"encoder.layers.{index}.weight"].shape[0])
            else:
                blocks[-1] += 1
        config.update(in_channels=state["encoder.layers.0.weight"].shape[1],
                      num_encoder_blocks=tuple(blocks), encoder_block_out_channels=tuple(widths))
    return config


def _build_tiny(path, state: dict):
    from diffusers import AutoencoderTiny

    config = infer_tiny_config(path, state)
    with torch.device("meta"):
        model = AutoencoderTiny(**config)
    has_encoder = "num_encoder_blocks" in config
    if not has_encoder:
        model.encoder = None
    info = VAEInfo(kind="tiny", latent_channels=config["latent_channels"],
                   downscale=2 ** (len(config["num_decoder_blocks"]) - 1), can_encode=has_encoder,
                   decode_elements_per_pixel=TINY_PEAK_FACTOR * config["decoder_block_out_channels"][-1],
                   source=path.name)
    return model, info


def _load_strict(path, model, state: dict, dtype, what: str) -> None:
    """Read every tensor into ``model`` (built on the meta device) in ``dtype``, or raise
    WeightsError listing what is missing / unexpected / misshapen before reading any data."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    problems = mismatch_lines(expected, {key: tuple(ref.shape) for key, ref in state.items()}, fits=_fits)
    if problems:
        raise WeightsError(path, f"does not fit the {what} its shapes suggest; "
                                 + "; ".join(problems)
                                 + ". The file may be truncated, or a different model.")
    tensors = {}
    for key, shape in expected.items():
        ref = state[key]
        tensor = ref.load(dtype) if hasattr(ref, "load") else torch.as_tensor(ref).to(dtype)
        tensors[key] = tensor.reshape(shape)  # LDM's 1×1 attention convs → linear weights
    model.load_state_dict(tensors, strict=True, assign=True)


def _fits(shape, expected: tuple) -> bool:
    """Equal shapes, or a [C,C,1,1] 1×1 conv where a [C,C] linear weight is expected."""
    shape = tuple(shape)
    return shape == expected or (len(shape) == 4 and shape[2:] == (1, 1) and shape[:2] == expected)
