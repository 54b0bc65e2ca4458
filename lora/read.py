"""Reading a LoRA file of any trainer's format (``lora/names.py``) into the internal form
(``lora/deltas.py``) for one model: ``read_lora(path, table)``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import Tensor

from ..files.errors import WeightsError
from ..files.tensors import read_metadata, read_state_dict
from .alpha import AlphaRule, alpha_rule, to_float, weights_file
from .deltas import Delta, Dense, Kron, LowRank, ParsedLora, Rows, TargetTable
from .names import (TEXT_ENCODER_PREFIXES, aliases, format_name, looks_made_for, resolve_module, split_key,
                    strip_dotted, why_missing)

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


def _convert(module: str, parts: dict[str, Tensor], rule: AlphaRule,
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
    metadata = read_metadata(weights_file(path))
    if not state:
        raise WeightsError(path, "holds no tensors")

    groups: dict[str, dict[str, Tensor]] = {}
    status: dict[str, str] = {}
    for key, tensor in state.items():
        split = split_key(key)
        if split is None:
            status[key] = "not a LoRA tensor (unknown key)"
            continue
        groups.setdefault(split[0], {})[split[1]] = tensor

    format_label = format_name(list(groups))
    dotted = aliases(table)
    underscored = {alias.replace(".", "_"): target for alias, target in dotted.items()}
    ranks = {r for parts in groups.values() if (r := _rank_of(parts)) is not None}
    newbie_peft = any(name.startswith("base_model.model.") for name in groups)
    rule = alpha_rule(path, metadata, ranks, newbie_peft)
    lokr_alpha = to_float(metadata.get("lora_alpha"))
    uses_alpha_rule = False

    deltas: dict[str, list[Delta]] = {}
    for raw, parts in groups.items():
        if raw.startswith(TEXT_ENCODER_PREFIXES):
            status[strip_dotted(raw)] = "text-encoder LoRA (not applied: this node patches the DiT only)"
            continue
        display, target = resolve_module(raw, dotted, underscored)
        if target is None:
            status.setdefault(display, why_missing(display, table))
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
    parsed = ParsedLora(path, format_label, alpha_source, deltas, status)
    # Nothing applies, or another model's LoRA where a stray key happens to fit (x_embedder ...).
    if not deltas or (looks_made_for(list(state)) and 2 * len(parsed.applied) < len(groups)):
        raise WeightsError(path, _nothing_applies(list(state), parsed))
    return parsed


def _tensor_alpha_source(groups: dict[str, dict[str, Tensor]], lokr_alpha: float | None) -> str:
    lokr = any({"w1", "w1_a"} & set(parts) for parts in groups.values())
    rule = ("LyCORIS LoKr rule: alpha / rank where a factor is low-rank, 1 for full matrices"
            if lokr else "scale = alpha / rank")
    if any("alpha" in parts for parts in groups.values()):
        return f"per-module .alpha tensors ({rule})"
    if lokr_alpha is not None:
        return f"safetensors metadata lora_alpha={lokr_alpha:g} ({rule})"
    return "none needed (full-matrix deltas, scale 1)"


def _nothing_applies(keys: list[str], parsed: ParsedLora) -> str:
    made_for = looks_made_for(keys)
    sample = ", ".join(keys[:3])
    if made_for:
        return (f"this LoRA looks made for {made_for}, not for Next-DiT (NewBie / Lumina-2): "
                f"no key names a module of this model (keys like {sample}). Use a LoRA trained "
                f"for NewBie-image or Lumina-2.")
    lines = "\n  ".join(parsed.report_lines()[:12])
    return (f"no LoRA key applies to this model (format: {parsed.format}; keys like {sample}).\n  "
            f"{lines}\nUse a LoRA trained for this model (NewBie-image / Lumina-2 Next-DiT).")
