"""What a Next-DiT file records for sampling it, kept with the loaded model on its seam.

A few-step student (``python -m nextdit_nodes distill --steps N``) only gives good images at the
step count, solver and time shift it was trained for, and at its guidance scale when that was
fixed: its file records them (``SamplerSettings.to_metadata``), the loader attaches them to the
model's seam, and the sampler uses them when asked for "the model's own settings" (steps 0).
Files without these keys (every official checkpoint) have no own settings.

A file may also record the latent → RGB projection of the autoencoder it was trained with, for
previews (the FLUX factors fit no other autoencoder): JSON {"factors": C×3, "bias": 3}.
"""

from __future__ import annotations

import json

from ..sampler_settings import SamplerSettings

_ENTRY = "own_settings"       # its name on the model's seam (a LoRA's structural copy inherits it)
_PREVIEW_ENTRY = "latent_rgb"
PREVIEW = "nextdit_latent_rgb"   # metadata key


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


def preview_from_metadata(metadata: dict[str, str]) -> tuple[tuple, tuple] | None:
    """(factors C×3, bias 3) the file records for previews, or None; ValueError for a damaged entry."""
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
        model.seam.detach(_PREVIEW_ENTRY)
    else:
        model.seam.attach(_PREVIEW_ENTRY, preview, replace=True)


def preview_factors(model) -> tuple[tuple, tuple] | None:
    """The latent → RGB projection the model's file records, or None (the FLUX one applies)."""
    seam = getattr(model, "seam", None)
    return None if seam is None else seam.get(_PREVIEW_ENTRY)
