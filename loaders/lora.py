"""Reading a LoRA file of any trainer's format into one internal form.

Formats (research `peers.md` §3), told apart by their key names:

- kohya / sd-scripts: ``lora_unet_layers_0_attention_qkv.lora_down.weight`` / ``.lora_up.weight``
  / ``.alpha`` (underscored module paths, embedders optional);
- NewbieLoraTrainer LoRA (PEFT ``save_pretrained``): ``base_model.model.layers.0.attention.qkv
  .lora_A.weight`` / ``.lora_B.weight``, alpha only in the sibling ``adapter_config.json``;
- NewbieLoraTrainer LoKr (LyCORIS): ``lycoris_layers_0_attention_qkv.lokr_w1`` / ``lokr_w2``
  (or their ``_a``/``_b`` factors) / ``.alpha``, metadata ``lora_rank``/``lora_alpha``;
- diffusers / PEFT Lumina-2 names: ``transformer.layers.0.attn.to_q.lora_A.weight`` ...
  (q/k/v land on row slices of the fused ``attention.qkv``);
- ComfyUI ``diffusion_model.<path>.lora_A/lora_B`` (+ ``.alpha``) and bare ``<path>.lora_A/B``
  (DiffSynth).

The internal form, per target module (official module path such as ``layers.3.attention.qkv``),
is a list of deltas: ``LowRank`` (ΔW = scale·up@down), ``Kron`` (ΔW = scale·kron(w1, w2)) or
``Dense`` (a full ΔW / Δbias), each optionally restricted to a row range of the target's output.
Module names are matched against the model's own (given as a ``TargetTable``), never guessed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor

from .errors import WeightsError
from .files import read_metadata, read_state_dict
from .keys import group_keys, strip_leading

log = logging.getLogger(__name__)

# NewbieLoraTrainer `lora.toml` defaults (research peers §3): r=8, lora_alpha=4 -> scale 0.5.
NEWBIE_TRAINER_DEFAULT_RANK = 8
NEWBIE_TRAINER_DEFAULT_ALPHA = 4.0


# ---- the internal form ---------------------------------------------------------------------

Rows = tuple[int, int]  # [start, stop) of the target's output rows; None = all rows


@dataclass(frozen=True)
class LowRank:
    """ΔW = scale · up @ down: down [r, in], up [rows, r]."""

    down: Tensor
    up: Tensor
    scale: float
    rows: Rows | None = None


@dataclass(frozen=True)
class Kron:
    """ΔW = scale · kron(w1, w2): w1 [a, c], w2 [b, d] -> ΔW [a·b, c·d] (LyCORIS LoKr)."""

    w1: Tensor
    w2: Tensor
    scale: float
    rows: Rows | None = None


@dataclass(frozen=True)
class Dense:
    """A full delta of a parameter: ``weight`` has the parameter's shape, ``bias`` [out] (either may be None)."""

    weight: Tensor | None
    bias: Tensor | None
    scale: float = 1.0
    rows: Rows | None = None


Delta = LowRank | Kron | Dense


@dataclass(frozen=True)
class TargetTable:
    """What the model offers to patch.

    linears: module path -> (out_features, in_features) of every Linear;
    params: module path -> {parameter name: shape} of other modules (norm layers);
    qkv_split: rows of q, k, v in a fused ``attention.qkv`` ([n_heads·hd, kv·hd, kv·hd]).
    """

    linears: dict[str, tuple[int, int]]
    params: dict[str, dict[str, tuple[int, ...]]]
    qkv_split: tuple[int, int, int] | None


@dataclass
class ParsedLora:
    """A LoRA file converted for one model: deltas per target and a per-module status for the report."""

    path: Path
    format: str
    alpha_source: str
    deltas: dict[str, list[Delta]]          # official module path -> deltas
    status: dict[str, str]                  # module name (official if known) -> "applied" / why not

    def report_lines(self) -> list[str]:
        """Status lines grouped over layer indices (``layers.0-35.attention.qkv: applied``)."""
        return group_status_lines(self.status)

    @property
    def applied(self) -> list[str]:
        return [name for name, status in self.status.items() if status == "applied"]

    @property
    def not_applied(self) -> dict[str, str]:
        return {name: status for name, status in self.status.items() if status != "applied"}


# ---- key anatomy ----------------------------------------------------------------------------

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
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.",
                          "text_encoder_2.", "te.", "lycoris_te_")


def _split_key(key: str) -> tuple[str, str] | None:
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


def _looks_made_for(keys: list[str]) -> str | None:
    for name, pattern in _FOREIGN_MODELS:
        if any(pattern.search(key) for key in keys):
            return name
    return None


# ---- module-name aliases --------------------------------------------------------------------

def _aliases(table: TargetTable) -> dict[str, tuple[str, Rows | None]]:
    """Every dotted name a LoRA may use for a patchable module -> (official path, rows or None).

    Official names map to themselves; diffusers Lumina-2 names and the Z-Image names core ComfyUI
    accepts map onto the official modules, q/k/v onto row slices of the fused qkv.
    """
    names: dict[str, tuple[str, Rows | None]] = {}
    for path in list(table.linears) + list(table.params):
        names[path] = (path, None)
    blocks = sorted({m.group(1) for path in table.linears
                     if (m := re.match(r"((?:layers|noise_refiner|context_refiner)\.\d+)\.", path))})
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


def _strip_dotted(name: str) -> str:
    return strip_leading(name, _DOTTED_PREFIXES)


# Official Next-DiT module patterns ({} = an index), to name an underscored LoRA module that the
# model lacks (``lora_unet_layers_40_attention_qkv`` -> ``layers.40.attention.qkv``) in reports.
_OFFICIAL_PATTERNS = tuple(
    [f"{blocks}.{{}}.{leaf}" for blocks in ("layers", "noise_refiner", "context_refiner")
     for leaf in ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2",
                  "feed_forward.w3", "adaLN_modulation.{}", "attention_norm1", "attention_norm2",
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


def _resolve(raw: str, dotted: dict, underscored: dict) -> tuple[str, tuple[str, Rows | None] | None]:
    """(display name, (official path, rows) or None) for a LoRA module name."""
    for prefix in _UNDERSCORE_PREFIXES:
        if raw.startswith(prefix):
            bare = raw[len(prefix):]
            target = underscored.get(bare)
            return (_display(target) if target else _dotted_guess(bare)), target
    name = _strip_dotted(raw)
    target = dotted.get(name)
    return (_display(target) if target else name), target


def _display(target: tuple[str, Rows | None]) -> str:
    path, rows = target
    return path if rows is None else f"{path}[{rows[0]}:{rows[1]}]"


# ---- alpha sources --------------------------------------------------------------------------

@dataclass(frozen=True)
class _AlphaRule:
    """Where the PEFT-style alpha comes from when a module carries no ``.alpha`` tensor."""

    alpha: float | None            # None = alpha equals each module's rank (scale 1)
    source: str
    patterns: dict[str, float] = field(default_factory=dict)
    rank_sqrt: bool = False        # PEFT use_rslora: scale = alpha / sqrt(r)
    trainer_default: bool = False  # NewbieLoraTrainer defaults: only meaningful for rank 8

    def scale(self, module: str, rank: int) -> float:
        alpha = self.alpha
        for pattern, value in self.patterns.items():
            if re.fullmatch(rf"(.*\.)?({pattern})", module):
                alpha = value
                break
        if self.trainer_default and rank != NEWBIE_TRAINER_DEFAULT_RANK:
            alpha = None
        if alpha is None:
            return 1.0
        return alpha / (math.sqrt(rank) if self.rank_sqrt else rank)


def _adapter_config(path: Path) -> tuple[Path, dict] | None:
    folder = path if path.is_dir() else path.parent
    candidate = folder / "adapter_config.json"
    if not candidate.is_file():
        return None
    try:
        return candidate, json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable %s: %s", candidate, error)
        return None


def _weights_file(path: Path) -> Path:
    """The safetensors file whose metadata describes ``path`` (a folder's adapter file)."""
    if path.is_dir():
        for name in ("adapter_model.safetensors", "pytorch_lora_weights.safetensors"):
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.safetensors"))
        return found[0] if found else path
    return path


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _alpha_rule(path: Path, metadata: dict[str, str], ranks: set[int], newbie_peft: bool) -> _AlphaRule:
    """adapter_config.json next to the file, else safetensors metadata, else the format's default."""
    found = _adapter_config(path)
    if found is not None:
        config_path, config = found
        alpha, r = _float(config.get("lora_alpha")), config.get("r")
        # A config of another adapter in the same folder must not rescale this one.
        if alpha is not None and (r is None or config.get("rank_pattern") or ranks <= {r}):
            patterns = {str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
            return _AlphaRule(alpha, f"{config_path.name} next to the file (r={r}, lora_alpha={alpha:g})",
                              patterns, bool(config.get("use_rslora")))
        log.warning("%s does not describe this LoRA (r=%s, file ranks %s): ignored",
                    config_path, r, sorted(ranks))
        rule = _alpha_rule_without_config(path, metadata, newbie_peft)
        return replace(rule, source=f"{rule.source} ({config_path.name} next to the file has r={r}, "
                                    f"not this LoRA's rank {sorted(ranks)}: ignored)")
    return _alpha_rule_without_config(path, metadata, newbie_peft)


def _alpha_rule_without_config(path: Path, metadata: dict[str, str], newbie_peft: bool) -> _AlphaRule:
    if "lora_adapter_metadata" in metadata:  # diffusers writes its LoraConfig as JSON here
        try:
            config = json.loads(metadata["lora_adapter_metadata"])
            if isinstance(config, dict) and "transformer" in config and isinstance(config["transformer"], dict):
                config = config["transformer"]
            alpha = _float(config.get("lora_alpha"))
            if alpha is not None:
                patterns = {str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
                return _AlphaRule(alpha, f"safetensors metadata lora_adapter_metadata (lora_alpha={alpha:g})",
                                  patterns, bool(config.get("use_rslora")))
        except ValueError:
            log.warning("unreadable lora_adapter_metadata in %s: ignored", path)
    for key in ("lora_alpha", "ss_network_alpha", "network_alpha", "alpha"):
        alpha = _float(metadata.get(key))
        if alpha is not None:
            return _AlphaRule(alpha, f"safetensors metadata {key}={alpha:g}")
    if newbie_peft:
        return _AlphaRule(NEWBIE_TRAINER_DEFAULT_ALPHA,
                          f"no adapter_config.json or metadata: NewbieLoraTrainer defaults "
                          f"(r={NEWBIE_TRAINER_DEFAULT_RANK}, lora_alpha={NEWBIE_TRAINER_DEFAULT_ALPHA:g}: "
                          f"scale 0.5 for rank-8 modules; alpha = rank, scale 1, for other ranks)",
                          trainer_default=True)
    return _AlphaRule(None, "none in the file: alpha = rank (scale 1)")


# ---- conversion -----------------------------------------------------------------------------

def _rank_of(parts: dict[str, Tensor]) -> int | None:
    if "down" in parts:
        return int(parts["down"].shape[0])
    for name in ("w1_a", "w2_a"):  # LyCORIS: lora_dim = w1_a.size(1) or w2_a.size(1)
        if name in parts:
            return int(parts[name].shape[1])
    return None


def _lokr_delta(parts: dict[str, Tensor], alpha: float | None) -> Kron:
    """LyCORIS LoKr: ΔW = kron(w1, w2) · alpha/rank when a factor is low-rank, else · 1.

    (LyCORIS `LokrModule`: alpha is forced to lora_dim when both w1 and w2 are full matrices,
    rank = w1_a.size(1) or w2_a.size(1); ComfyUI's LoKr adapter uses the same rule.)
    """
    w1 = parts["w1"] if "w1" in parts else parts["w1_a"].float() @ parts["w1_b"].float()
    w2 = parts["w2"] if "w2" in parts else parts["w2_a"].float() @ parts["w2_b"].float()
    rank = _rank_of(parts)
    scale = 1.0 if rank is None or alpha is None else alpha / rank
    return Kron(w1, w2, scale)


def _convert(module: str, parts: dict[str, Tensor], rule: _AlphaRule,
             lokr_alpha: float | None) -> Delta | str:
    """One LoRA module's tensors -> a delta, or the reason it cannot be applied."""
    roles = set(parts) - {"alpha"}
    if roles & {"loha", "oft", "mid", "t2"}:
        kind = ("LoHa" if "loha" in roles else "OFT" if "oft" in roles else "Tucker (conv) factors")
        return f"{kind}: not supported"
    if "dora_scale" in roles:
        return "DoRA weight decomposition: not supported"
    alpha = float(parts["alpha"].float().item()) if "alpha" in parts else None
    if roles == {"down", "up"}:
        down, up = _as_matrix(parts["down"]), _as_matrix(parts["up"])
        if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
            return f"malformed low-rank pair (down {list(down.shape)}, up {list(up.shape)})"
        rank = int(down.shape[0])
        scale = alpha / rank if alpha is not None else rule.scale(module, rank)
        return LowRank(down, up, scale)
    if roles and roles <= {"w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b"}:
        complete = (("w1" in roles) != ({"w1_a", "w1_b"} <= roles)) and \
                   (("w2" in roles) != ({"w2_a", "w2_b"} <= roles))
        if not complete:
            return f"incomplete LoKr factors ({', '.join(sorted(roles))})"
        return _lokr_delta(parts, alpha if alpha is not None else lokr_alpha)
    if roles and roles <= {"diff", "diff_b", "w_norm", "b_norm"}:
        weight = parts.get("diff", parts.get("w_norm"))
        bias = parts.get("diff_b", parts.get("b_norm"))
        return Dense(weight, bias)
    return f"unrecognised tensor set ({', '.join(sorted(roles)) or 'alpha only'})"


def _as_matrix(tensor: Tensor) -> Tensor:
    """Some converters keep a Linear's factors as 1x1-conv weights [o, i, 1, 1]."""
    if tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
        return tensor.flatten(1)
    return tensor


def _check_shape(delta: Delta, target: str, rows: Rows | None, table: TargetTable) -> str | None:
    """None if ``delta`` fits ``target`` (restricted to ``rows``), else what does not fit."""
    if target in table.linears:
        out_features, in_features = table.linears[target]
        want_out = rows[1] - rows[0] if rows else out_features
        if isinstance(delta, LowRank):
            got = (int(delta.up.shape[0]), int(delta.down.shape[1]))
        elif isinstance(delta, Kron):
            got = (int(delta.w1.shape[0] * delta.w2.shape[0]), int(delta.w1.shape[1] * delta.w2.shape[1]))
        else:
            got = tuple(delta.weight.shape) if delta.weight is not None else (int(delta.bias.shape[0]), in_features)
            if delta.bias is not None and int(delta.bias.shape[0]) != want_out:
                return f"shape mismatch: bias delta [{delta.bias.shape[0]}] vs model [{want_out}]"
        if got != (want_out, in_features):
            return f"shape mismatch: LoRA {got[0]}x{got[1]} vs model {want_out}x{in_features}"
        return None
    shapes = table.params.get(target, {})
    if not isinstance(delta, Dense):
        return "low-rank delta on a non-linear layer: not supported"
    for name, tensor in (("weight", delta.weight), ("bias", delta.bias)):
        if tensor is not None and tuple(tensor.shape) != shapes.get(name):
            return f"shape mismatch: {name} delta {list(tensor.shape)} vs model {list(shapes.get(name, ()))}"
    return None


def read_lora(path, table: TargetTable) -> ParsedLora:
    """Read the LoRA at ``path`` (file or PEFT folder) and convert it for the model described by ``table``.

    Raises WeightsError if the file is unreadable, made for another model, or nothing in it applies.
    """
    path = Path(path)
    state = read_state_dict(path)
    metadata = read_metadata(_weights_file(path))
    if not state:
        raise WeightsError(path, "holds no tensors")

    groups: dict[str, dict[str, Tensor]] = {}
    status: dict[str, str] = {}
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            status[key] = "not a LoRA tensor (unknown key)"
            continue
        groups.setdefault(split[0], {})[split[1]] = tensor

    format_name = _format_name(list(groups))
    dotted = _aliases(table)
    underscored = {alias.replace(".", "_"): target for alias, target in dotted.items()}
    ranks = {r for parts in groups.values() if (r := _rank_of(parts)) is not None}
    newbie_peft = any(name.startswith("base_model.model.") for name in groups)
    rule = _alpha_rule(path, metadata, ranks, newbie_peft)
    lokr_alpha = _float(metadata.get("lora_alpha"))
    uses_alpha_rule = False

    deltas: dict[str, list[Delta]] = {}
    for raw, parts in groups.items():
        if raw.startswith(_TEXT_ENCODER_PREFIXES):
            status[_strip_dotted(raw)] = "text-encoder LoRA (not applied: this node patches the DiT only)"
            continue
        display, target = _resolve(raw, dotted, underscored)
        if target is None:
            status.setdefault(display, _why_missing(display, table))
            continue
        delta = _convert(target[0], parts, rule, lokr_alpha)
        if isinstance(delta, str):
            status[display] = delta
            continue
        problem = _check_shape(delta, target[0], target[1], table)
        if problem:
            status[display] = problem
            continue
        uses_alpha_rule |= isinstance(delta, LowRank) and "alpha" not in parts
        if target[1] is not None:
            delta = replace(delta, rows=target[1])
        deltas.setdefault(target[0], []).append(delta)
        status[display] = "applied"

    alpha_source = rule.source if uses_alpha_rule else _tensor_alpha_source(groups, lokr_alpha)
    parsed = ParsedLora(path, format_name, alpha_source, deltas, status)
    # Nothing applies, or another model's LoRA where a stray key happens to fit (x_embedder ...).
    if not deltas or (_looks_made_for(list(state)) and 2 * len(parsed.applied) < len(groups)):
        raise WeightsError(path, _nothing_applies(list(state), parsed))
    return parsed


def _why_missing(name: str, table: TargetTable) -> str:
    """'no such module in this model', with what the model has instead where that is known."""
    reason = "no such module in this model"
    if name.startswith(("clip_text_pooled_proj.", "time_text_embed.")):
        return reason + " (NewBie's CLIP path; this model has none: Lumina-2 shaped)"
    if name.startswith("guidance_embedder."):
        return reason + " (guidance-distilled models only)"
    block = re.match(r"(layers|noise_refiner|context_refiner)\.\d+\.", name)
    if block:
        count = len({path.split(".")[1] for path in table.linears if path.startswith(block.group(1) + ".")})
        return reason + f" (this model has {block.group(1)}.0-{count - 1})" if count else reason
    return reason


def _tensor_alpha_source(groups: dict[str, dict[str, Tensor]], lokr_alpha: float | None) -> str:
    lokr = any({"w1", "w1_a"} & set(parts) for parts in groups.values())
    rule = ("LyCORIS LoKr rule: alpha / rank where a factor is low-rank, 1 for full matrices"
            if lokr else "scale = alpha / rank")
    if any("alpha" in parts for parts in groups.values()):
        return f"per-module .alpha tensors ({rule})"
    if lokr_alpha is not None:
        return f"safetensors metadata lora_alpha={lokr_alpha:g} ({rule})"
    return "none needed (full-matrix deltas, scale 1)"


def _format_name(modules: list[str]) -> str:
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


def _nothing_applies(keys: list[str], parsed: ParsedLora) -> str:
    made_for = _looks_made_for(keys)
    sample = ", ".join(keys[:3])
    if made_for:
        return (f"this LoRA looks made for {made_for}, not for Next-DiT (NewBie / Lumina-2): "
                f"no key names a module of this model (keys like {sample}). Use a LoRA trained "
                f"for NewBie-image or Lumina-2.")
    lines = "\n  ".join(parsed.report_lines()[:12])
    return (f"no LoRA key applies to this model (format: {parsed.format}; keys like {sample}).\n  "
            f"{lines}\nUse a LoRA trained for this model (NewBie-image / Lumina-2 Next-DiT).")


# ---- report grouping ------------------------------------------------------------------------

def group_status_lines(status: dict[str, str], limit: int = 40) -> list[str]:
    """``{module: status}`` -> one line per status and module pattern, layer indices folded into
    ranges by ``keys.group_keys``: ``layers.0-35.attention.qkv: applied``. Applied lines first."""
    by_status: dict[str, list[str]] = {}
    for name, state in status.items():
        by_status.setdefault(state, []).append(name)
    order = sorted(by_status, key=lambda state: state != "applied")
    return [f"{line}: {state}" for state in order for line in group_keys(by_status[state], limit=limit)]
