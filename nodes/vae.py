"""VAE nodes: load the FLUX autoencoder (or the TAEF1 tiny decoder), decode LATENT → IMAGE,
encode IMAGE → LATENT. The work is in ``vae/loading.py`` and ``vae/model.py``."""

from __future__ import annotations

from ..vae.settings import TILED_CHOICES
from . import host

CATEGORY = "NextDiT/vae"


class NextDiTVAELoader:
    DISPLAY_NAME = "NextDiT VAE Loader"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads the FLUX.1 autoencoder NewBie uses (BFL ae.safetensors, a diffusers vae/ folder, or "
        "an all-in-one checkpoint carrying it) or the TAEF1 tiny decoder (taef1_decoder.pth / "
        ".safetensors: much faster and lighter, slightly softer, decode only). The kind is "
        "detected from the file."
    )
    RETURN_TYPES = ("NEXTDIT_VAE", "VAE")
    RETURN_NAMES = ("vae", "core_vae")
    OUTPUT_TOOLTIPS = ("The autoencoder, for NextDiT VAE Decode / Encode.",
                       "The same autoencoder as a core ComfyUI VAE (same weights, no copy), for core "
                       "VAE Decode / Encode / Encode (for Inpainting) / Decode (Tiled) and ControlNet "
                       "nodes; inside ComfyUI only.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (host.list_model_files("vae"), {
                "tooltip": "File in models/vae: the FLUX.1 VAE (ae.safetensors), a diffusers vae "
                           "folder, or TAEF1 (taef1_decoder.safetensors / .pth)."}),
        }}

    def load(self, vae_name: str):
        from ..vae.loading import load_vae
        from .host.memory import core_vae_of

        vae = load_vae(host.resolve_model_file("vae", vae_name), device=host.torch_device())
        return (vae, core_vae_of(vae))


class NextDiTVAEDecode:
    DISPLAY_NAME = "NextDiT VAE Decode"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Decodes a LATENT (FLUX raw latent space, as the NextDiT Sampler and core nodes use) into "
        "an IMAGE, converted to [0,1] as the official pipeline does. Tiled decoding keeps memory "
        "bounded for large images at a tiny cost in fidelity near tile seams."
    )
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded images [B,H,W,3] in [0,1].",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("NEXTDIT_VAE", {"tooltip": "From NextDiT VAE Loader."}),
            "samples": ("LATENT", {"tooltip": "Latents to decode (FLUX raw space, 16 channels)."}),
            "tiled": (list(TILED_CHOICES), {
                "default": "auto",
                "tooltip": "auto: decode in overlapping tiles only when a whole image would not fit "
                           "in free memory; on: always tile (least memory); off: never tile "
                           "(exact, needs the most memory)."}),
        }}

    def decode(self, vae, samples: dict, tiled: str = "auto"):
        from .host.memory import use_model

        latent = samples["samples"]
        if tiled == "off" and latent.ndim == 4:  # refused before it starts, rather than out of memory
            from ..sampling.memory_check import decode_problem
            from ..vae.tiled import free_memory_bytes

            scale = vae.info.downscale
            problem = decode_problem(vae.decode_peak_bytes(tuple(latent.shape[-2:])), free_memory_bytes(vae.device),
                                     str(vae.device), latent.shape[-1] * scale, latent.shape[-2] * scale)
            if problem is not None:
                raise MemoryError(problem)
        if latent.ndim == 4:  # inside ComfyUI: the memory manager makes room (and reloads the VAE
            use_model(vae.model, vae.decode_peak_bytes(tuple(latent.shape[-2:])), vae.host_slot)   # if evicted)
        progress = None

        def on_step(done: int, total: int) -> None:
            nonlocal progress
            host.check_interrupt()  # a cancel stops between tiles
            if progress is None:
                progress = host.Progress(total)
            progress.update(done)

        try:
            image = vae.decode(latent, tiled=tiled, on_step=on_step)
        except ValueError as error:
            raise ValueError(f"NextDiT VAE Decode: {error}") from error
        return (image,)


class NextDiTVAEEncode:
    DISPLAY_NAME = "NextDiT VAE Encode"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Encodes an IMAGE into a LATENT (FLUX raw space) with the mean of the latent distribution, "
        "as NewBie's training did; for img2img through the sampler's latent input. Sizes are "
        "centre-cropped to multiples of 8. Needs the full FLUX VAE (the tiny decoder cannot encode)."
    )
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The encoded latent {'samples': [B,16,H/8,W/8]}.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("NEXTDIT_VAE", {"tooltip": "From NextDiT VAE Loader (the full FLUX VAE)."}),
            "pixels": ("IMAGE", {"tooltip": "Images [B,H,W,3] in [0,1] to encode."}),
        }}

    def encode(self, vae, pixels):
        from .host.memory import use_model

        use_model(vae.model, slot=vae.host_slot)   # inside ComfyUI: registered with its memory manager
        try:
            latent = vae.encode(pixels)
        except ValueError as error:
            raise ValueError(f"NextDiT VAE Encode: {error}") from error
        return ({"samples": latent},)


NODE_CLASSES = [NextDiTVAELoader, NextDiTVAEDecode, NextDiTVAEEncode]
