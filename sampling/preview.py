"""Latent previews: a linear FLUX latent → RGB projection (no VAE), shown without making the
sampler wait for the GPU.

The 16×3 factors and the bias are the values ComfyUI ships for FLUX latents
(``comfy/latent_formats.py``, class ``Flux``, ``latent_rgb_factors`` / ``latent_rgb_factors_bias``),
applied like ComfyUI's latent2rgb previewer to the NORMALISED clean-latent estimate; the result in
[-1, 1] is mapped to [0, 255].

A preview needs the latent on the CPU. Copying it at step i blocks the host until the GPU has
finished step i, so the GPU then idles while the host builds the preview and queues step i+1: a
host synchronisation every step. ``LaggedPreviews`` instead projects step i's preview to RGB on
the device (a 16->3 matrix product on a 1/8-size image), copies it into pinned memory
asynchronously, and shows it at step i+1, when the host waits only for work the GPU finished
while step i+1 was already queued behind it. ``finish()`` shows the last one. On the CPU previews
are shown at once.
"""

from __future__ import annotations

from typing import Callable

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


Emit = Callable[[int, object], None]   # (step 0-based, PIL image)


def latent_to_rgb(latent: Tensor, projection: tuple | None = None) -> Tensor:
    """(16, h, w) normalised latent -> (h, w, 3) uint8 on the latent's device. ``projection``:
    (factors, bias) of another autoencoder (what a model file records), else FLUX's."""
    rows, offsets = projection or (FLUX_LATENT_RGB_FACTORS, FLUX_LATENT_RGB_BIAS)
    factors = torch.tensor(rows, dtype=torch.float32, device=latent.device)
    bias = torch.tensor(offsets, dtype=torch.float32, device=latent.device)
    rgb = torch.einsum("chw,ck->hwk", latent.detach().float(), factors) + bias
    return ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def _image(rgb: Tensor):
    from PIL import Image

    return Image.fromarray(rgb.numpy())


class LaggedPreviews:
    """``previews(step, x0)`` each step (x0: (B, 16, h, w) on the sampling device), then ``finish()``.

    lag: show each preview one step late; default: on CUDA only (on the CPU waiting costs nothing).
    """

    def __init__(self, emit: Emit, lag: bool | None = None, projection: tuple | None = None):
        self.emit = emit
        self.lag = lag
        self.projection = projection
        self.pending = None   # (step, host uint8 image, CUDA event or None)

    def __call__(self, step: int, x0: Tensor) -> None:
        rgb = latent_to_rgb(x0[0], self.projection)
        cuda = rgb.device.type == "cuda"
        if not (cuda if self.lag is None else self.lag):
            self.emit(step, _image(rgb.cpu()))
            return
        host = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=cuda)
        host.copy_(rgb, non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        previous, self.pending = self.pending, (step, host, event)
        if previous is not None:
            self._show(previous)

    def finish(self) -> None:
        if self.pending is not None:
            previous, self.pending = self.pending, None
            self._show(previous)

    def _show(self, pending) -> None:
        step, host, event = pending
        if event is not None:
            event.synchronize()      # done long ago: the GPU is already on the next step
        self.emit(step, _image(host))
