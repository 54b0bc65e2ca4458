"""The one internal form every LoRA file is read into, whatever trainer wrote it.

Per target module (official module path such as ``layers.3.attention.qkv``), a list of deltas:
``LowRank`` (ΔW = scale·up@down), ``Kron`` (ΔW = scale·kron(w1, w2)) or ``Dense`` (a full ΔW /
Δbias), each optionally restricted to a row range of the target's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..files.keys import group_keys

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


def group_status_lines(status: dict[str, str], limit: int = 40) -> list[str]:
    """``{module: status}`` -> one line per status and module pattern, layer indices folded into
    ranges by ``files.keys.group_keys``: ``layers.0-35.attention.qkv: applied``. Applied lines first."""
    by_status: dict[str, list[str]] = {}
    for name, state in status.items():
        by_status.setdefault(state, []).append(name)
    order = sorted(by_status, key=lambda state: state != "applied")
    return [f"{line}: {state}" for state in order for line in group_keys(by_status[state], limit=limit)]
