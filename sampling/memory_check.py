"""Refusing a sampling request that cannot fit, before the first step: the DiT's activation peak
for the requested size × batch (both CFG branches) against the memory the compute device has
left, and the decoded batch (float32 IMAGE, what VAE Decode returns) against the host's. A request
that needs more is refused with both numbers and the ways out, instead of running until memory
runs out after many minutes of steps. Pure arithmetic; the node reads what the device has.

The estimates are those the placement and the decoder already use (``dit.placement.
dit_activation_bytes``, the VAE's ``decode_peak_bytes``): rough, so only a request beyond the
whole of what is available is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
IMAGE_BYTES_PER_PIXEL = 3 * 4  # an IMAGE is [B,H,W,3] float32


@dataclass(frozen=True)
class SamplingMemory:
    """What a sampling request needs: the DiT forward's activation peak over the whole batch and
    for one image, and the decoded batch itself."""

    sampler_bytes: int
    per_image_sampler_bytes: int
    images_bytes: int


def sampling_memory(activation_bytes, batch: int, branches: int, image_hw: tuple[int, int]) -> SamplingMemory:
    """``activation_bytes(batch)``: the DiT's activation peak for a forward over ``batch`` latents
    (``dit_activation_bytes`` with the size and text length bound); ``branches``: 2 with CFG."""
    pixels = image_hw[0] * image_hw[1]
    return SamplingMemory(activation_bytes(batch * branches), activation_bytes(branches),
                          batch * pixels * IMAGE_BYTES_PER_PIXEL)


def size_text(count: int) -> str:
    """Bytes as people read them: GiB with one decimal, MiB below a tenth of a GiB."""
    return f"{count / GIB:.1f} GiB" if count >= GIB // 10 else f"{count / 2**20:.0f} MiB"


def memory_problem(need: SamplingMemory, *, width: int, height: int, batch: int, device: str,
                   available_device: int, available_host: int) -> str | None:
    """Why the request cannot fit (the numbers and the ways out), or None."""
    request = f"{width}x{height}, batch {batch}"
    if need.sampler_bytes > available_device:
        fitting = max(0, available_device // max(need.per_image_sampler_bytes, 1))
        batch_hint = (f"a batch of {fitting} fits" if 0 < fitting < batch
                      else "even one image of this size does not fit; choose a smaller size")
        return (f"{request} needs about {size_text(need.sampler_bytes)} of activations while sampling, "
                f"but {device} has {size_text(available_device)} available: {batch_hint}, or "
                f"free memory for it (the loader's offload=blocks streams the model's blocks and "
                f"leaves their memory to the activations)")
    if need.images_bytes > available_host:
        fitting = max(0, available_host // max(need.images_bytes // max(batch, 1), 1))
        return (f"{request} decodes to {size_text(need.images_bytes)} of images, but this machine has "
                f"{size_text(available_host)} of memory available: a batch of {fitting} fits "
                f"(run the rest as separate prompts)")
    return None


def decode_problem(decode_bytes: int, available: int, device: str, width: int, height: int) -> str | None:
    """Why an untiled decode (VAE Decode with tiled=off) of one image cannot fit, or None."""
    if decode_bytes <= available:
        return None
    return (f"decoding {width}x{height} untiled needs about {size_text(decode_bytes)}, but {device} has "
            f"{size_text(available)} available: set tiled to auto or on (tiled decode)")
