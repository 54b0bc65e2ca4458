"""Writing a LoRA for the Next-DiT in the one format both this pack and ComfyUI core read in full.

Keys (per patched Linear, official module path): ``diffusion_model.<path>.lora_A.weight`` (down,
[rank, in]), ``diffusion_model.<path>.lora_B.weight`` (up, [out, rank]) and
``diffusion_model.<path>.alpha`` (a scalar), so ΔW = alpha / rank · up @ down. ComfyUI core maps
``diffusion_model.<path>`` onto the model's ``<path>.weight`` for every model (``comfy/lora.py``
``model_lora_keys_unet``) and reads ``lora_A``/``lora_B`` with a per-module ``.alpha``
(``comfy/weight_adapter/lora.py``); ``lora/read.py`` reads the same keys (``lora/names.py``).
The safetensors metadata carries ``lora_rank``, ``lora_alpha`` and whatever the trainer adds
(all values strings, as the format demands).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..files.atomic import atomic_path

PREFIX = "diffusion_model."


@dataclass(frozen=True)
class LowRankPair:
    """One module's factors: down [rank, in], up [out, rank]."""

    down: Tensor
    up: Tensor

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def lora_state_dict(pairs: dict[str, LowRankPair], alpha: float,
                    dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The file's tensors (CPU, contiguous, own storage) for ``{module path: pair}``."""
    if not pairs:
        raise ValueError("a LoRA needs at least one module")
    out: dict[str, Tensor] = {}
    for path, pair in sorted(pairs.items()):
        if pair.down.ndim != 2 or pair.up.ndim != 2 or pair.up.shape[1] != pair.down.shape[0]:
            raise ValueError(f"{path}: down {tuple(pair.down.shape)} and up {tuple(pair.up.shape)} are not a "
                             f"low-rank pair ([rank, in] and [out, rank])")

        def own(tensor: Tensor) -> Tensor:
            return tensor.detach().to("cpu", dtype or tensor.dtype).contiguous().clone()

        out[f"{PREFIX}{path}.lora_A.weight"] = own(pair.down)
        out[f"{PREFIX}{path}.lora_B.weight"] = own(pair.up)
        out[f"{PREFIX}{path}.alpha"] = torch.tensor(float(alpha))
    return out


def save_lora(path: str | Path, pairs: dict[str, LowRankPair], alpha: float,
              metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``pairs`` as one ``.safetensors`` LoRA (see the module docstring); returns the path.

    The file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    ranks = sorted({pair.rank for pair in pairs.values()})
    info = {"lora_rank": ",".join(map(str, ranks)), "lora_alpha": f"{float(alpha):g}",
            "lora_format": "diffusion_model.<module>.lora_A/lora_B/alpha (ComfyUI and nextdit-nodes)"}
    info.update({str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as partial:
        save_file(lora_state_dict(pairs, alpha, dtype), str(partial), metadata=info)
    return path
