"""Where a LoRA's alpha comes from when its modules carry no ``.alpha`` tensor: an
``adapter_config.json`` next to the file (PEFT), the safetensors metadata (diffusers, LyCORIS), or
the defaults of the trainer that wrote the format.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)

# NewbieLoraTrainer's `config_template.toml` defaults: r=8, lora_alpha=4 -> scale 0.5.
NEWBIE_TRAINER_DEFAULT_RANK = 8
NEWBIE_TRAINER_DEFAULT_ALPHA = 4.0

@dataclass(frozen=True)
class AlphaRule:
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


def weights_file(path: Path) -> Path:
    """The safetensors file whose metadata describes ``path`` (a folder's adapter file)."""
    if path.is_dir():
        for name in ("adapter_model.safetensors", "pytorch_lora_weights.safetensors"):
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.safetensors"))
        return found[0] if found else path
    return path


def to_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def alpha_rule(path: Path, metadata: dict[str, str], ranks: set[int], newbie_peft: bool) -> AlphaRule:
    """adapter_config.json next to the file, else safetensors metadata, else the format's default."""
    found = _adapter_config(path)
    if found is not None:
        config_path, config = found
        alpha, r = to_float(config.get("lora_alpha")), config.get("r")
        # A config of another adapter in the same folder must not rescale this one.
        if alpha is not None and (r is None or config.get("rank_pattern") or ranks <= {r}):
            patterns = {str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
            return AlphaRule(alpha, f"{config_path.name} next to the file (r={r}, lora_alpha={alpha:g})",
                              patterns, bool(config.get("use_rslora")))
        log.warning("%s does not describe this LoRA (r=%s, file ranks %s): ignored",
                    config_path, r, sorted(ranks))
        rule = _alpha_rule_without_config(path, metadata, newbie_peft)
        return replace(rule, source=f"{rule.source} ({config_path.name} next to the file has r={r}, "
                                    f"not this LoRA's rank {sorted(ranks)}: ignored)")
    return _alpha_rule_without_config(path, metadata, newbie_peft)


def _alpha_rule_without_config(path: Path, metadata: dict[str, str], newbie_peft: bool) -> AlphaRule:
    if "lora_adapter_metadata" in metadata:  # diffusers writes its LoraConfig as JSON here
        try:
            config = json.loads(metadata["lora_adapter_metadata"])
            if isinstance(config, dict) and "transformer" in config and isinstance(config["transformer"], dict):
                config = config["transformer"]
            alpha = to_float(config.get("lora_alpha"))
            if alpha is not None:
                patterns = {str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
                return AlphaRule(alpha, f"safetensors metadata lora_adapter_metadata (lora_alpha={alpha:g})",
                                  patterns, bool(config.get("use_rslora")))
        except ValueError:
            log.warning("unreadable lora_adapter_metadata in %s: ignored", path)
    for key in ("lora_alpha", "ss_network_alpha", "network_alpha", "alpha"):
        alpha = to_float(metadata.get(key))
        if alpha is not None:
            return AlphaRule(alpha, f"safetensors metadata {key}={alpha:g}")
    if newbie_peft:
        return AlphaRule(NEWBIE_TRAINER_DEFAULT_ALPHA,
                          f"no adapter_config.json or metadata: NewbieLoraTrainer defaults "
                          f"(r={NEWBIE_TRAINER_DEFAULT_RANK}, lora_alpha={NEWBIE_TRAINER_DEFAULT_ALPHA:g}: "
                          f"scale 0.5 for rank-8 modules; alpha = rank, scale 1, for other ranks)",
                          trainer_default=True)
    return AlphaRule(None, "none in the file: alpha = rank (scale 1)")
