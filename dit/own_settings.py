"""The sampling settings a Next-DiT file was made for, read from its safetensors metadata.

A few-step student (``python -m nextdit_nodes distill --steps N``) only gives good images at the
step count, solver and time shift it was trained for, and at its guidance scale when that was
fixed: its file records them, the loader attaches them to the model (``attach``), and the
sampler uses them when asked for "the model's own settings" (steps 0; ``sampling/settings.py``).
Files without these keys (every official checkpoint) have no own settings.

Torch-free: plain strings in, a small dataclass out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

_ATTACHMENT = "own_settings"   # key in model.attachments (a LoRA's structural copy inherits it)

# Metadata keys (values are strings, as safetensors requires).
STEPS, SOLVER, SHIFT, CFG, GUIDANCE = ("nextdit_steps", "nextdit_solver", "nextdit_shift", "nextdit_cfg",
                                       "nextdit_guidance")
# Optional: CFG's data-time truncation the settings were measured with, and the side of the square
# images the model was trained on (the sampler's size 0 means this side).
CFG_TRUNC, RESOLUTION = "nextdit_cfg_trunc", "nextdit_resolution"
# Optional: JSON {"factors": 16×3, "bias": 3}, the latent → RGB projection for previews fitted on
# the autoencoder the model was trained with (the FLUX one's factors fit no other).
PREVIEW = "nextdit_latent_rgb"
_PREVIEW_ATTACHMENT = "latent_rgb"


@dataclass(frozen=True)
class OwnSettings:
    """What a file says it was made for: solver steps, solver name, time shift, CFG scale (1 for
    students: one forward per step), the guidance scale (None: a range, the user's choice), CFG's
    truncation (None: not recorded, the sampler's value stays) and the training image side (None:
    not recorded)."""
    steps: int
    solver: str
    shift: float
    cfg: float = 1.0
    guidance: float | None = None
    cfg_trunc: float | None = None
    resolution: int | None = None

    def to_metadata(self) -> dict[str, str]:
        out = {STEPS: str(self.steps), SOLVER: self.solver, SHIFT: repr(float(self.shift)),
               CFG: repr(float(self.cfg))}
        if self.guidance is not None:
            out[GUIDANCE] = repr(float(self.guidance))
        if self.cfg_trunc is not None:
            out[CFG_TRUNC] = repr(float(self.cfg_trunc))
        if self.resolution is not None:
            out[RESOLUTION] = str(self.resolution)
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
        lowest_ok = value >= 0 if key in (CFG, CFG_TRUNC) else value > 0   # 0 is legal for these two
        if not (math.isfinite(value) and lowest_ok):
            raise ValueError(f"metadata {key} = {text!r} is not a {'whole ' if whole else ''}number in range; "
                             f"the file's header is damaged or was edited by hand (remove the key, or "
                             f"distill the student again)")
        return value

    solver = metadata.get(SOLVER, "euler")
    resolution = number(RESOLUTION, None, whole=True)
    return OwnSettings(int(number(STEPS, None, whole=True)), solver, number(SHIFT, "6.0"), number(CFG, "1.0"),
                       number(GUIDANCE, None), number(CFG_TRUNC, None),
                       None if resolution is None else int(resolution))


def attach(model, settings: OwnSettings | None) -> None:
    """Put (or with None, clear) the settings on a loaded model."""
    if settings is None:
        model.attachments.pop(_ATTACHMENT, None)
    else:
        model.attachments[_ATTACHMENT] = settings


def own_settings(model) -> OwnSettings | None:
    """The settings the model's file was made for, or None."""
    return getattr(model, "attachments", {}).get(_ATTACHMENT)


def preview_from_metadata(metadata: dict[str, str]) -> tuple[tuple, tuple] | None:
    """(factors 16×3, bias 3) the file records for previews, or None; ValueError for a damaged entry."""
    text = metadata.get(PREVIEW)
    if text is None:
        return None
    try:
        data = json.loads(text)
        factors = tuple(tuple(float(v) for v in row) for row in data["factors"])
        bias = tuple(float(v) for v in data["bias"])
    except (ValueError, KeyError, TypeError):
        factors, bias = (), ()
    if not factors or any(len(row) != 3 for row in factors) or len(bias) != 3:
        raise ValueError(f"metadata {PREVIEW} is not {{\"factors\": C×3 numbers, \"bias\": 3 numbers}}; the "
                         f"file's header is damaged or was edited by hand (remove the key)")
    return factors, bias


def preview_metadata(factors, bias) -> dict[str, str]:
    return {PREVIEW: json.dumps({"factors": [[round(float(v), 5) for v in row] for row in factors],
                                 "bias": [round(float(v), 5) for v in bias]})}


def attach_preview(model, preview: tuple[tuple, tuple] | None) -> None:
    if preview is None:
        model.attachments.pop(_PREVIEW_ATTACHMENT, None)
    else:
        model.attachments[_PREVIEW_ATTACHMENT] = preview


def preview_factors(model) -> tuple[tuple, tuple] | None:
    """The latent → RGB projection the model's file records, or None (the FLUX one applies)."""
    return getattr(model, "attachments", {}).get(_PREVIEW_ATTACHMENT)
