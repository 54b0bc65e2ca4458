"""LoRA key names: which tensor of which module a key is, the names trainers use for the Next-DiT's
modules (mapped onto the official ones), and the key patterns of other models' LoRAs.

Formats, told apart by their key names:
- kohya / sd-scripts: ``lora_unet_layers_0_attention_qkv.lora_down.weight`` / ``.lora_up.weight``
  / ``.alpha`` (underscored module paths, embedders optional);
- NewbieLoraTrainer LoRA (github.com/NewBieAI-Lab/NewbieLoraTrainer, PEFT ``save_pretrained``):
  ``base_model.model.layers.0.attention.qkv.lora_A.weight`` / ``.lora_B.weight``, alpha only in
  the sibling ``adapter_config.json``;
- NewbieLoraTrainer LoKr (LyCORIS): ``lycoris_layers_0_attention_qkv.lokr_w1`` / ``lokr_w2``
  (or their ``_a``/``_b`` factors) / ``.alpha``, metadata ``lora_rank``/``lora_alpha``;
- diffusers / PEFT Lumina-2 names: ``transformer.layers.0.attn.to_q.lora_A.weight`` ...
  (q/k/v land on row slices of the fused ``attention.qkv``);
- ComfyUI ``diffusion_model.<path>.lora_A/lora_B`` (+ ``.alpha``) and bare ``<path>.lora_A/B``
  (DiffSynth-Studio).
Module names are matched against the model's own (a ``TargetTable``), never guessed.
"""

from __future__ import annotations

import re

from ..dit.params import BLOCK_KEY, BLOCK_LISTS, LORA_TARGETS
from ..files.keys import strip_leading
from .deltas import Rows, TargetTable

# Suffix -> role. Longest first so ".lora_A.default.weight" wins over shorter forms.
_SUFFIX_ROLES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up",
    ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lokr_w1_a": "w1_a", ".lokr_w1_b": "w1_b", ".lokr_w2_a": "w2_a", ".lokr_w2_b": "w2_b",
    ".lokr_w1": "w1", ".lokr_w2": "w2", ".lokr_t2": "t2",
    ".diff_b": "diff_b", ".diff": "diff", ".w_norm": "w_norm", ".b_norm": "b_norm",
    ".alpha": "alpha", ".dora_scale": "dora_scale", ".lora_mid.weight": "mid",
    ".lora_magnitude_vector": "dora_scale", ".lora_magnitude_vector.weight": "dora_scale",  # PEFT DoRA
    ".hada_w1_a": "loha", ".hada_w1_b": "loha", ".hada_w2_a": "loha", ".hada_w2_b": "loha",
    ".hada_t1": "loha", ".hada_t2": "loha", ".oft_blocks": "oft", ".oft_diag": "oft",
}
_SUFFIXES = sorted(_SUFFIX_ROLES, key=len, reverse=True)

# Prefixes of dotted module paths, stripped in this order (repeatedly).
_DOTTED_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.",
                    "transformer.", "module.", "_orig_mod.", "unet.")
# Prefixes of underscored module paths (kohya, LyCORIS, some diffusers-side trainers).
_UNDERSCORE_PREFIXES = ("lora_unet_", "lycoris_", "lora_transformer_")
TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.",
                          "text_encoder_2.", "te.", "lycoris_te_")


def split_key(key: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], _SUFFIX_ROLES[suffix]
    return None


# ---- other models' LoRAs ---------------------------------------------------------------------

# (model described, regex over keys); checked in order, first hit names the model.
_FOREIGN_MODELS = (
    ("FLUX.1", re.compile(r"(double_blocks|single_blocks|single_transformer_blocks)[._]\d")),
    # SDXL: two text encoders, or attentions with more than one transformer block (SD 1.x has one).
    ("SDXL", re.compile(r"^(lora_te[12]_|text_encoder_2\.)|attentions[._]\d+[._]transformer_blocks[._][1-9]|"
                        r"(input|output)_blocks[._]\d+[._]1[._]transformer_blocks[._][1-9]")),
    ("a Stable Diffusion UNet (SD 1.x/2.x or SDXL)",
     re.compile(r"(input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block)[._]\d")),
    ("SD3 or FLUX.1 (an MMDiT)", re.compile(r"joint_blocks[._]\d|transformer_blocks[._]\d+[._]attn[._]add_q_proj")),
    ("Wan / a video DiT", re.compile(r"blocks[._]\d+[._](self_attn|cross_attn)[._]")),
)


def looks_made_for(keys: list[str]) -> str | None:
    for name, pattern in _FOREIGN_MODELS:
        if any(pattern.search(key) for key in keys):
            return name
    return None


# ---- module-name aliases --------------------------------------------------------------------

def aliases(table: TargetTable) -> dict[str, tuple[str, Rows | None]]:
    """Every dotted name a LoRA may use for a patchable module -> (official path, rows or None).

    Official names map to themselves; diffusers Lumina-2 names and the Z-Image names core ComfyUI
    accepts map onto the official modules, q/k/v onto row slices of the fused qkv.
    """
    names: dict[str, tuple[str, Rows | None]] = {}
    for path in list(table.linears) + list(table.params):
        names[path] = (path, None)
    blocks = sorted({m.group(1) for path in table.linears if (m := re.match(rf"({BLOCK_KEY})\.", path))})
    for block in blocks:
        qkv = f"{block}.attention.qkv"
        if qkv in table.linears and table.qkv_split is not None:
            q, k, v = table.qkv_split
            slices = {"to_q": (0, q), "to_k": (q, q + k), "to_v": (q + k, q + k + v)}
            for projection, rows in slices.items():
                names[f"{block}.attn.{projection}"] = (qkv, rows)
                names[f"{block}.attention.{projection}"] = (qkv, rows)  # Z-Image naming
        for alias in (f"{block}.attn.to_out.0", f"{block}.attention.to_out.0"):
            names[alias] = (f"{block}.attention.out", None)
        for i in (1, 2, 3):
            names[f"{block}.feed_forward.linear_{i}"] = (f"{block}.feed_forward.w{i}", None)
        names[f"{block}.norm1.linear"] = (f"{block}.adaLN_modulation.1", None)
    diffusers_embedders = {
        "time_caption_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_caption_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_caption_embed.caption_embedder.1": "cap_embedder.1",
        "time_caption_embed.caption_embedder.0": "cap_embedder.0",
        "time_caption_embed.clip_text_pooled_proj.1": "clip_text_pooled_proj.1",
        "time_caption_embed.time_text_embed.1": "time_text_embed.1",
        "norm_out.linear_1": "final_layer.adaLN_modulation.1",
        "norm_out.linear_2": "final_layer.linear",
    }
    known = set(table.linears) | set(table.params)
    for alias, path in diffusers_embedders.items():
        if path in known:
            names[alias] = (path, None)
    return {alias: target for alias, target in names.items()
            if target[0] in known}


def strip_dotted(name: str) -> str:
    return strip_leading(name, _DOTTED_PREFIXES)


# Official Next-DiT module patterns ({} = an index), to name an underscored LoRA module that the
# model lacks (``lora_unet_layers_40_attention_qkv`` -> ``layers.40.attention.qkv``) in reports.
_OFFICIAL_PATTERNS = tuple(
    [f"{blocks}.{{}}.{leaf}" for blocks in BLOCK_LISTS
     for leaf in (*LORA_TARGETS, "adaLN_modulation.{}", "attention_norm1", "attention_norm2",
                  "ffn_norm1", "ffn_norm2", "attention.q_norm", "attention.k_norm")]
    + ["x_embedder", "t_embedder.mlp.{}", "cap_embedder.{}", "clip_text_pooled_proj.{}",
       "time_text_embed.{}", "guidance_embedder.mlp.{}", "final_layer.linear",
       "final_layer.adaLN_modulation.{}", "norm_final"])
_UNDERSCORED_PATTERNS = {pattern.replace(".", "_"): pattern for pattern in _OFFICIAL_PATTERNS}


def _dotted_guess(bare: str) -> str:
    """An underscored module name in official dotted form if it fits an official pattern."""
    numbers = re.findall(r"(?<=_)\d+(?=_|$)", bare)
    pattern = re.sub(r"(?<=_)\d+(?=_|$)", "{}", bare)
    official = _UNDERSCORED_PATTERNS.get(pattern)
    return official.format(*numbers) if official else bare


def resolve_module(raw: str, dotted: dict, underscored: dict) -> tuple[str, tuple[str, Rows | None] | None]:
    """(display name, (official path, rows) or None) for a LoRA module name."""
    for prefix in _UNDERSCORE_PREFIXES:
        if raw.startswith(prefix):
            bare = raw[len(prefix):]
            target = underscored.get(bare)
            return (_display(target) if target else _dotted_guess(bare)), target
    name = strip_dotted(raw)
    target = dotted.get(name)
    return (_display(target) if target else name), target


def _display(target: tuple[str, Rows | None]) -> str:
    path, rows = target
    return path if rows is None else f"{path}[{rows[0]}:{rows[1]}]"


def why_missing(name: str, table: TargetTable) -> str:
    """'no such module in this model', with what the model has instead where that is known."""
    reason = "no such module in this model"
    if name.startswith(("clip_text_pooled_proj.", "time_text_embed.")):
        return reason + " (NewBie's CLIP path; this model has none: Lumina-2 shaped)"
    if name.startswith("guidance_embedder."):
        return reason + " (guidance-distilled models only)"
    block = re.match(rf"({'|'.join(BLOCK_LISTS)})\.\d+\.", name)
    if block:
        count = len({path.split(".")[1] for path in table.linears if path.startswith(block.group(1) + ".")})
        return reason + f" (this model has {block.group(1)}.0-{count - 1})" if count else reason
    return reason


def format_name(modules: list[str]) -> str:
    def share(test) -> bool:
        return any(test(name) for name in modules)

    if share(lambda n: n.startswith("lycoris_")):
        return "LyCORIS (lycoris_*; NewbieLoraTrainer LoKr)"
    if share(lambda n: n.startswith("lora_unet_")):
        return "kohya / sd-scripts (lora_unet_*)"
    if share(lambda n: n.startswith("base_model.model.")):
        return "PEFT (base_model.model.*; NewbieLoraTrainer LoRA)"
    if share(lambda n: n.startswith("transformer.") or ".attn.to_" in n):
        return "diffusers / PEFT (transformer.*)"
    if share(lambda n: n.startswith(("diffusion_model.", "model.diffusion_model."))):
        return "ComfyUI (diffusion_model.*)"
    return "bare module paths (DiffSynth style)"
