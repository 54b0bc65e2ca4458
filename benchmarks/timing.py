"""What the benchmark scripts share: timing one call on a device, and random CONDITIONING."""

from __future__ import annotations

import time

import torch


def timed(call, device: torch.device) -> float:
    """Seconds ``call()`` takes, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def random_conditioning(length: int, params, generator: torch.Generator):
    """CONDITIONING of ``length`` random caption tokens and a random pooled Jina vector."""
    return [[torch.randn(1, length, params.cap_dim, generator=generator),
             {"pooled_output": torch.randn(1, params.clip_dim, generator=generator)}]]
