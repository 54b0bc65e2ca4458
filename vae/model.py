"""The NEXTDIT_VAE object: a diffusers autoencoder plus the latent format and the image conventions.

Conventions (the official NewBie ``demo.py`` and ``finetune.py``): LATENT values are in the FLUX
VAE's raw space; the FLUX autoencoder decodes raw latents to [-1,1] and the image is
``clamp((x + 1) / 2, 0, 1)``; encoding maps the image to [-1,1] and keeps the mean of the latent
distribution (no sampling), as the official training did. The tiny decoder (TAEF1) works on the
normalised latent, so raw latents go through ``latent_format.from_raw`` first (and its encoder's
output through ``to_raw``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .latent_format import LatentFormat
from .settings import DEFAULT_OVERLAP, DEFAULT_TILE, TILED_CHOICES
from .tiled import count_tiles, fitting_tile, free_memory_bytes, should_tile, tiled_decode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VAEInfo:
    """What the loader learned about the weights."""

    kind: str  # "flux" (AutoencoderKL) | "tiny" (AutoencoderTiny)
    latent_channels: int
    downscale: int  # image pixels per latent pixel, per side
    can_encode: bool
    # Estimated peak activation memory of an untiled decode, in elements per image pixel.
    decode_elements_per_pixel: float
    source: str = ""


class NextDiTVAE:
    """Decode raw LATENTs to IMAGEs and encode IMAGEs to raw LATENTs.

    ``model`` is a diffusers ``AutoencoderKL`` (kind "flux") or ``AutoencoderTiny`` ("tiny"), in
    eval mode on its device and dtype; decoder-only weights have ``model.encoder`` set to None.
    """

    def __init__(self, model: torch.nn.Module, latent_format: LatentFormat, info: VAEInfo):
        self.model = model
        self.latent_format = latent_format
        self.info = info
        self.host_slot: dict[str, object] = {}   # where the host keeps its memory manager's patcher

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return (f"NextDiTVAE(kind={self.kind!r}, latent_channels={self.info.latent_channels}, "
                f"downscale={self.info.downscale}, {self.latent_format}, source={self.info.source!r})")

    @torch.inference_mode()
    def decode(self, raw_latent: torch.Tensor, tiled: str = "auto", tile: int | None = None,
               overlap: int = DEFAULT_OVERLAP,
               on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """raw latent [B,C,h,w] → IMAGE [B,h*f,w*f,3] float32 in [0,1] on the CPU.

        ``tiled``: "on", "off", or "auto" (tile when an untiled decode would not fit in the free
        memory of the VAE's device, then with the largest tile that fits). ``tile``/``overlap``
        are in latent pixels; ``tile`` None means :data:`DEFAULT_TILE` for "on" and the fitting
        size for "auto". Samples are decoded one at a time; ``on_step(done, total)`` is called
        after each decoder call.
        """
        self._check_latent(raw_latent)
        if tiled not in TILED_CHOICES:
            raise ValueError(f"tiled={tiled!r}; expected one of {', '.join(TILED_CHOICES)}")
        latent = raw_latent if self.kind == "flux" else self.latent_format.from_raw(raw_latent)
        batch, _, height, width = latent.shape
        use_tiles, auto_tile = self._plan_tiles(tiled, (height, width), overlap)
        tile = tile or auto_tile
        per_sample = count_tiles((height, width), tile, overlap) if use_tiles else 1
        done = 0

        def step() -> None:
            nonlocal done
            done += 1
            if on_step is not None:
                on_step(done, batch * per_sample)

        images = []
        for index in range(batch):
            sample = latent[index:index + 1].to(self.device, self.dtype)
            if use_tiles:
                image = tiled_decode(self._decode_model_space, sample, self.info.downscale,
                                     tile=tile, overlap=overlap, on_tile=step)
            else:
                image = self._decode_model_space(sample)
                step()
            images.append(((image.float() + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(images).permute(0, 2, 3, 1).contiguous()

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE [B,H,W,C≥3] in [0,1] → raw latent [B,C_latent,H/f,W/f] float32 on the CPU.

        Sizes that are not multiples of the VAE's factor f are centre-cropped down to one.
        """
        if not self.info.can_encode:
            raise ValueError(f"this VAE ({self.info.source or self.kind}) has no encoder weights, "
                             f"so it only decodes (the TAEF1 tiny decoder and decoder-only files "
                             f"are like that). Load the full FLUX VAE (ae.safetensors) to encode "
                             f"images.")
        if image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError(f"expected an IMAGE [B,H,W,3], got shape {tuple(image.shape)}")
        pixels = _crop_to_multiple(image[..., :3], self.info.downscale)
        pixels = pixels.permute(0, 3, 1, 2).to(self.device, self.dtype) * 2 - 1
        latents = []
        for index in range(pixels.shape[0]):
            encoded = self.model.encode(pixels[index:index + 1])
            if self.kind == "flux":
                latent = encoded.latent_dist.mean  # the distribution's mode: no sampling
            else:
                latent = self.latent_format.to_raw(encoded.latents.float())
            latents.append(latent.float().cpu())
        return torch.cat(latents)

    def _decode_model_space(self, latent: torch.Tensor) -> torch.Tensor:
        """The decoder's own input space → image [B,3,H,W] in about [-1,1]."""
        return self.model.decode(latent).sample

    def decode_peak_bytes(self, latent_hw: tuple[int, int]) -> int:
        """Estimated peak activation memory of decoding one latent of ``latent_hw`` untiled."""
        pixels = latent_hw[0] * latent_hw[1] * self.info.downscale ** 2
        return int(pixels * self.info.decode_elements_per_pixel * self.dtype.itemsize)

    def _plan_tiles(self, tiled: str, latent_hw: tuple[int, int], overlap: int) -> tuple[bool, int]:
        """(whether to tile, the tile size to use when none is given)."""
        if tiled != "auto":
            return tiled == "on", DEFAULT_TILE
        image_hw = (latent_hw[0] * self.info.downscale, latent_hw[1] * self.info.downscale)
        free = free_memory_bytes(self.device)
        bytes_per_pixel = self.info.decode_elements_per_pixel * self.dtype.itemsize
        if not should_tile(image_hw, bytes_per_pixel, free):
            return False, DEFAULT_TILE
        tile = fitting_tile(bytes_per_pixel, free, self.info.downscale, overlap)
        logger.info("decoding %dx%d in tiles of %d latent pixels (%.1f GiB free)",
                    image_hw[1], image_hw[0], tile, free / 2**30)
        return True, tile

    def _check_latent(self, latent: torch.Tensor) -> None:
        channels = self.info.latent_channels
        if latent.ndim != 4 or latent.shape[1] != channels:
            raise ValueError(f"this VAE decodes latents [B,{channels},h,w]; got shape "
                             f"{tuple(latent.shape)}. Was the LATENT made for another model?")


def _crop_to_multiple(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Centre-crop [B,H,W,C] so H and W are multiples of ``factor`` (as core VAEEncode does)."""
    height, width = image.shape[1], image.shape[2]
    new_h, new_w = height // factor * factor, width // factor * factor
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image {height}x{width} is smaller than the VAE's factor {factor}")
    if (new_h, new_w) != (height, width):
        logger.warning("cropping the image from %dx%d to %dx%d (multiples of %d) before encoding",
                       width, height, new_w, new_h, factor)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        image = image[:, top:top + new_h, left:left + new_w]
    return image
