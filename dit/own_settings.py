"""The sampling settings a Next-DiT file was made for, kept with the loaded model.

A few-step student (``python -m nextdit_nodes distill --steps N``) only gives good images at the
step count, solver and time shift it was trained for, and at its guidance scale when that was
fixed: its file records them (``SamplerSettings.to_metadata``), the loader attaches them to the
model's seam, and the sampler uses them when asked for "the model's own settings" (steps 0).
Files without these keys (every official checkpoint) have no own settings.
"""

from __future__ import annotations

from ..sampler_settings import SamplerSettings

_ENTRY = "own_settings"   # its name on the model's seam (a LoRA's structural copy inherits it)


def attach(model, settings: SamplerSettings | None) -> None:
    """Put (or with None, clear) the settings on a loaded model."""
    if settings is None:
        model.seam.detach(_ENTRY)
    else:
        model.seam.attach(_ENTRY, settings, replace=True)


def own_settings(model) -> SamplerSettings | None:
    """The settings the model's file was made for, or None."""
    seam = getattr(model, "seam", None)
    return None if seam is None else seam.get(_ENTRY)
