"""The sampling settings a Next-DiT file was made for, read from its safetensors metadata.

A few-step student (``python -m nextdit_nodes distill --steps N``) only gives good images at the
step count, solver and time shift it was trained for, and at its guidance scale when that was
fixed: its file records them, the loader attaches them to the model (``attach``), and the
sampler uses them when asked for "the model's own settings" (steps 0; ``sampling/settings.py``).
Files without these keys (every official checkpoint) have no own settings.

Torch-free: plain strings in, a small dataclass out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_ENTRY = "own_settings"   # its name on the model's seam (a LoRA's structural copy inherits it)

# Metadata keys (values are strings, as safetensors requires).
STEPS, SOLVER, SHIFT, CFG, GUIDANCE = ("nextdit_steps", "nextdit_solver", "nextdit_shift", "nextdit_cfg",
                                       "nextdit_guidance")


@dataclass(frozen=True)
class OwnSettings:
    """What a file says it was made for: solver steps, solver name, time shift, CFG scale (1 for
    students: one forward per step) and the guidance scale (None: a range, the user's choice)."""
    steps: int
    solver: str
    shift: float
    cfg: float = 1.0
    guidance: float | None = None

    def to_metadata(self) -> dict[str, str]:
        out = {STEPS: str(self.steps), SOLVER: self.solver, SHIFT: repr(float(self.shift)),
               CFG: repr(float(self.cfg))}
        if self.guidance is not None:
            out[GUIDANCE] = repr(float(self.guidance))
        return out

    def describe(self) -> str:
        guidance = "" if self.guidance is None else f", guidance {self.guidance:g}"
        steps = f"{self.steps} {self.solver} step{'' if self.steps == 1 else 's'}"
        return f"{steps}, shift {self.shift:g}, cfg {self.cfg:g}{guidance}"


def from_metadata(metadata: dict[str, str]) -> OwnSettings | None:
    """The file's own settings, None when it records no step count; ValueError naming the key for
    a value that is not a number in range (a damaged or hand-edited header)."""
    if STEPS not in metadata:
        return None

    def number(key: str, default: str | None, whole: bool = False) -> float | None:
        text = metadata.get(key, default)
        if text is None:
            return None
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            value = math.nan
        lowest_ok = value >= 0 if key == CFG else value > 0     # cfg 0 is legal, the rest must be positive
        if not (math.isfinite(value) and lowest_ok):
            raise ValueError(f"metadata {key} = {text!r} is not a {'whole ' if whole else ''}number in range; "
                             f"the file's header is damaged or was edited by hand (remove the key, or "
                             f"distill the student again)")
        return value

    solver = metadata.get(SOLVER, "euler")
    return OwnSettings(int(number(STEPS, None, whole=True)), solver, number(SHIFT, "6.0"), number(CFG, "1.0"),
                       number(GUIDANCE, None))


def attach(model, settings: OwnSettings | None) -> None:
    """Put (or with None, clear) the settings on a loaded model."""
    if settings is None:
        model.seam.detach(_ENTRY)
    else:
        model.seam.attach(_ENTRY, settings, replace=True)


def own_settings(model) -> OwnSettings | None:
    """The settings the model's file was made for, or None."""
    seam = getattr(model, "seam", None)
    return None if seam is None else seam.get(_ENTRY)
