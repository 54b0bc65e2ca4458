"""Latent previews that never make the sampler wait for the GPU.

A preview needs the latent on the CPU. Copying it at step i blocks the host until the GPU has
finished step i, so the GPU then idles while the host builds the preview and queues step i+1:
a host synchronisation every step. Here step i's preview is projected to RGB on the device (a
16->3 matrix product on a 1/8-size image), copied into pinned memory asynchronously, and shown
at step i+1, when the host waits only for work the GPU finished while step i+1 was already
queued behind it. `finish()` shows the last one. On the CPU previews are shown at once.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .preview import FLUX_LATENT_RGB_BIAS, FLUX_LATENT_RGB_FACTORS

Emit = Callable[[int, object], None]   # (step 0-based, PIL image)


def latent_to_rgb_on_device(latent: Tensor) -> Tensor:
    """(16, h, w) normalised latent -> (h, w, 3) uint8 on the latent's device (as preview.latent_to_rgb)."""
    factors = torch.tensor(FLUX_LATENT_RGB_FACTORS, dtype=torch.float32, device=latent.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32, device=latent.device)
    rgb = torch.einsum("chw,ck->hwk", latent.detach().float(), factors) + bias
    return ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def _image(rgb: Tensor):
    from PIL import Image  # noqa: PLC0415

    return Image.fromarray(rgb.numpy())


class LaggedPreviews:
    """``previews(step, x0)`` each step (x0: (B, 16, h, w) on the sampling device), then ``finish()``.

    lag: show each preview one step late; default: on CUDA only (on the CPU waiting costs nothing).
    """

    def __init__(self, emit: Emit, lag: bool | None = None):
        self.emit = emit
        self.lag = lag
        self.pending = None   # (step, host uint8 image, CUDA event or None)

    def __call__(self, step: int, x0: Tensor) -> None:
        rgb = latent_to_rgb_on_device(x0[0])
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
