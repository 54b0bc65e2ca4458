"""The pack's VAE as a core ComfyUI VAE (imported only inside ComfyUI).

``core_vae(vae)`` wraps the very autoencoder the pack's loader made (no copy) in a
``comfy.sd.VAE``, so core's VAE nodes (VAEDecode, VAEEncode, VAEEncodeForInpaint, VAEDecodeTiled)
and every other VAE input take it. Core's ``VAE`` calls its ``first_stage_model``
with ``decode(latent) -> image in [-1, 1]`` and ``encode(image in [-1, 1]) -> latent`` (both
[B, C, H, W]) and converts images to and from [0, 1] itself, as the pack's decoder does; the
LATENT between nodes is the VAE's raw space in both. So the pack's autoencoder goes in as that
``first_stage_model`` whatever its layout (a FLUX-type KL autoencoder with any channel widths and
GroupNorm groups, as the embedded one, or the TAEF1 tiny decoder), rather than being rebuilt by
core from its weights (core's own autoencoder assumes GroupNorm 32 and fixed widths).

Core's ``VAE.__init__`` is run with no weights, which sets every attribute its methods read to
its defaults for the installed ComfyUI version (and logs that it found none: that line is
silenced); then the model, the device and the patcher are the pack's. The patcher is the one
the pack's own VAE nodes load through (``memory.use_model``), so the memory manager sees one
model however the VAE is used.
"""

from __future__ import annotations

import logging

import torch
from comfy import model_management as mm
from comfy import sd

_CORE_VAE = "core_vae"   # its key in the NextDiTVAE's host slot


class PackAutoencoder(torch.nn.Module):
    """The pack's autoencoder with the two calls core's VAE makes. Tiny decoders work on the
    normalised latent, so the raw latent goes through the file's latent format (as
    ``vae/model.py`` does)."""

    def __init__(self, vae):
        super().__init__()
        self.module = vae.model
        self.kind, self.latent_format = vae.kind, vae.latent_format
        self.can_encode, self.source = vae.info.can_encode, vae.info.source or vae.kind

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if self.kind != "flux":
            latent = self.latent_format.from_raw(latent)
        return self.module.decode(latent).sample

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        if not self.can_encode:
            raise ValueError(f"this VAE ({self.source}) has no encoder weights, so it only decodes (the "
                             f"TAEF1 tiny decoder and decoder-only files are like that). Load the full "
                             f"autoencoder to encode images.")
        encoded = self.module.encode(image)
        if self.kind == "flux":
            return encoded.latent_dist.mean      # the distribution's mode, as NextDiT VAE Encode
        return self.latent_format.to_raw(encoded.latents.float())


class _NoWeightsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No VAE weights detected" not in record.getMessage()


class PackCoreVAE(sd.VAE):
    """A core VAE running a NextDiTVAE's autoencoder."""

    def __init__(self, vae, patcher):
        quiet = _NoWeightsWarning()
        logging.getLogger().addFilter(quiet)
        try:
            super().__init__(sd={})               # core's defaults; no model of its own
        finally:
            logging.getLogger().removeFilter(quiet)
        info = vae.info
        self.first_stage_model = PackAutoencoder(vae).eval()
        self.latent_channels = info.latent_channels
        self.downscale_ratio = self.upscale_ratio = info.downscale
        self.device = patcher.load_device
        self.vae_dtype = vae.dtype
        self.working_dtypes = [vae.dtype]
        self.output_device = mm.intermediate_device()
        self.patcher = patcher
        # The pack's own estimate of a decode's peak (per sample, untiled), for core's batching.
        self.memory_used_decode = lambda shape, dtype: shape[0] * vae.decode_peak_bytes(tuple(shape[-2:]))
        self.memory_used_encode = lambda shape, dtype: shape[0] * vae.decode_peak_bytes(
            (shape[-2] // info.downscale, shape[-1] // info.downscale))


def core_vae(vae, patcher):
    """The core VAE of a NextDiTVAE, one per VAE object (kept in its host slot)."""
    made = vae.host_slot.get(_CORE_VAE)
    if made is None or made.patcher is not patcher:
        made = PackCoreVAE(vae, patcher)
        vae.host_slot[_CORE_VAE] = made
    return made
