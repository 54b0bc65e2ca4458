"""Cheap latent previews: a linear FLUX latent → RGB projection (no VAE).

The 16×3 factors and the bias are the values ComfyUI ships for FLUX latents
(``comfy/latent_formats.py``, class ``Flux``, ``latent_rgb_factors`` / ``latent_rgb_factors_bias``),
applied like ComfyUI's latent2rgb previewer to the NORMALISED clean-latent estimate; the result in
[-1, 1] is mapped to [0, 255].
"""

from __future__ import annotations

import torch
from torch import Tensor

# rows: latent channels 0..15; columns: R, G, B
FLUX_LATENT_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def latent_to_rgb(latent: Tensor) -> Tensor:
    """(16, h, w) normalised latent → (h, w, 3) uint8 on the CPU."""
    factors = torch.tensor(FLUX_LATENT_RGB_FACTORS, dtype=torch.float32)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = torch.einsum("chw,ck->hwk", latent.detach().float().cpu(), factors) + bias
    return ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def preview_image(latent: Tensor):
    """A PIL image of one (16, h, w) normalised latent, 1/8 of the picture's size."""
    from PIL import Image  # noqa: PLC0415

    return Image.fromarray(latent_to_rgb(latent).numpy())  # (h, w, 3) uint8 → RGB
