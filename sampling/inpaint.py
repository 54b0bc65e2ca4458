"""Inpainting: only the region of a latent's ``noise_mask`` is generated, as core ComfyUI's
KSampler does it (``comfy/samplers.py`` ``KSamplerX0Inpaint``).

The mask (1 = generate, 0 = keep) is resized to the latent grid bilinearly and repeated over
channels and batch (core's ``comfy.utils.reshape_mask``). At every model evaluation at data-time
t the model sees the state inside the mask and, outside it, the input latent noised to t with
the sampling's own noise, t·latent + (1 − t)·noise; its clean-latent estimate is kept inside the
mask and replaced by the input latent outside. In velocity form for the solvers, that estimate D'
at state x gives v' = (D' − x)/(1 − t), so outside the mask the state follows the input latent's
own noising path exactly and ends on the input latent.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .solvers import Velocity


def resize_mask(noise_mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A LATENT's ``noise_mask`` ([h, w], [B, h, w] or [B, 1, h, w], any size) as (B, C, h, w) on the
    latent grid ``shape``, values in [0, 1]."""
    mask = noise_mask.float().reshape(-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])
    mask = torch.nn.functional.interpolate(mask, size=shape[2:], mode="bilinear")
    mask = mask.expand(-1, shape[1], -1, -1)
    if mask.shape[0] != shape[0]:        # repeat over the batch, as core's repeat_to_batch_size
        mask = mask.repeat(-(-shape[0] // mask.shape[0]), 1, 1, 1)[:shape[0]]
    return mask.clamp(0.0, 1.0)


class InpaintVelocity:
    """``velocity(x, t)`` that regenerates only the masked region (module docstring)."""

    def __init__(self, velocity: Velocity, mask: Tensor, latent: Tensor, noise: Tensor):
        self.velocity, self.mask, self.latent, self.noise = velocity, mask, latent, noise

    def __call__(self, x: Tensor, t: float) -> Tensor:
        keep = 1.0 - self.mask
        x_in = x * self.mask + (t * self.latent + (1.0 - t) * self.noise) * keep
        v = self.velocity(x_in, t)
        if t >= 1.0:   # the path's own velocity at its end (the estimate no longer moves)
            return v * self.mask + (self.latent - self.noise) * keep
        estimate = (x_in + (1.0 - t) * v) * self.mask + self.latent * keep
        return (estimate - x) / (1.0 - t)
