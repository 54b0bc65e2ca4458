"""The CONTROL_NET object the loader node returns: duck-typed to core ComfyUI's ``ControlBase``
(``comfy/controlnet.py``), so core's ``ControlNetApplyAdvanced`` (and any node that copies a
control net into CONDITIONING the same way) stores it under the entries' ``"control"`` key.

Core's apply node calls ``copy().set_cond_hint(image, strength, (start, end), vae=..., extra_concat=[])``
and ``set_previous_controlnet(prev)``: the entries then carry a chain of handles, newest first.
Core's samplers call ``pre_run``, ``get_control`` (per model call; what it returns reaches the
model's ``apply_model`` as ``control``), ``get_models``, ``get_extra_hooks``, ``cleanup`` and
``inference_memory_requirements``; the pack's NextDiT Sampler reads the chain with ``chain()``.

Pure logic: nothing here imports ComfyUI.
"""

from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor

from ..vae.latent_format import FLUX
from .apply import ActiveControl


class ControlNetHandle:
    """One ControlNet with what an apply node set on it (core's ControlBase fields, same names)."""

    def __init__(self, net, name: str = "ControlNet", vae=None, host_models=None):
        self.net = net
        self.name = name
        self.default_vae = vae      # the loader's VAE, used when the apply node gives none
        # () -> the host's memory-manager entries of ``net`` (inside ComfyUI its patcher; None: none)
        self.host_models = host_models
        self.cond_hint_original: Tensor | None = None   # IMAGE as (B, C, H, W), as core's apply node gives it
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range = None                       # core's sigmas, set by pre_run
        self.vae = None
        self.previous_controlnet = None
        self.extra_args: dict = {}
        self.extra_hooks = None
        self.extra_concat_orig: list = []
        self.multigpu_clones: dict = {}
        self._latents: dict = {}                         # (h, w) -> encoded control latent

    # ---- what core's apply node calls ------------------------------------------------------

    def copy(self) -> ControlNetHandle:
        other = ControlNetHandle(self.net, self.name, self.default_vae, self.host_models)
        other.cond_hint_original, other.strength = self.cond_hint_original, self.strength
        other.timestep_percent_range, other.vae = self.timestep_percent_range, self.vae
        other.extra_args = dict(self.extra_args)
        return other

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0), vae=None,
                      extra_concat=()):
        self.cond_hint_original = cond_hint
        self.strength = float(strength)
        self.timestep_percent_range = (float(timestep_percent_range[0]), float(timestep_percent_range[1]))
        self.vae = vae if vae is not None else self.default_vae
        self.extra_concat_orig = list(extra_concat or [])
        self._latents = {}
        return self

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    # ---- what core's samplers call ---------------------------------------------------------

    def pre_run(self, model, percent_to_timestep_function):
        self.timestep_range = (percent_to_timestep_function(self.timestep_percent_range[0]),
                               percent_to_timestep_function(self.timestep_percent_range[1]))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options=None):
        """The controls active at core's sigma ``t[0]`` for the batch ``x_noisy``: a list of
        ActiveControl (older handles of the chain first), or None. The pack's core MODEL runs them."""
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        sigma = float(t.reshape(-1)[0])
        if self.timestep_range is not None and not (self.timestep_range[1] <= sigma <= self.timestep_range[0]):
            return previous
        hint = self.latent(tuple(x_noisy.shape[2:]))
        hint = broadcast(hint, x_noisy.shape[0], batched_number)
        return (previous or []) + [ActiveControl(self.net, hint, self.strength)]

    def get_models(self):
        """What core's samplers load with the model: every handle's network of the chain."""
        previous = [] if self.previous_controlnet is None else self.previous_controlnet.get_models()
        return previous + [m for m in self.get_models_only_self() if m not in previous]

    def get_models_only_self(self):
        return list(self.host_models()) if self.host_models is not None else []

    def get_extra_hooks(self):
        return [] if self.previous_controlnet is None else self.previous_controlnet.get_extra_hooks()

    def get_instance_for_device(self, device):
        return self

    def inference_memory_requirements(self, dtype):
        return 0 if self.previous_controlnet is None else \
            self.previous_controlnet.inference_memory_requirements(dtype)

    def cleanup(self):
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        self.timestep_range = None

    # ---- shared -------------------------------------------------------------------------------

    def chain(self) -> list[ControlNetHandle]:
        """Every handle of the chain, the oldest first."""
        handles, handle = [], self
        while handle is not None:
            handles.append(handle)
            handle = handle.previous_controlnet
        return handles[::-1]

    def latent(self, latent_hw: tuple[int, int]) -> Tensor:
        """The control image as a normalised latent of ``latent_hw`` (encoded once per size)."""
        if latent_hw not in self._latents:
            self._latents[latent_hw] = encode_hint(self.vae, self.cond_hint_original, latent_hw)
        return self._latents[latent_hw]


def broadcast(hint: Tensor, batch: int, batched_number: int) -> Tensor:
    """A control latent batch for ``batch`` samples made of ``batched_number`` equal groups (core's
    ``broadcast_image_to``): one image is shared; n images repeat within each group."""
    if hint.shape[0] == 1:
        return hint
    per = batch // max(batched_number, 1)
    reps = -(-per // hint.shape[0])
    group = hint.repeat(reps, 1, 1, 1)[:per]
    return group.repeat(max(batched_number, 1), 1, 1, 1)


def _factor(vae) -> int:
    if hasattr(vae, "spacial_compression_encode"):       # core's VAE
        return int(vae.spacial_compression_encode())
    return int(vae.info.downscale)                        # the pack's NextDiTVAE


def encode_hint(vae, image: Tensor | None, latent_hw: tuple[int, int]) -> Tensor:
    """IMAGE (B, C, H, W) in [0, 1] -> normalised latent (B, 16, h, w): centre-cropped to the latent's
    aspect, resized to its pixel size (bilinear, antialiased), encoded with ``vae``."""
    if image is None:
        raise ValueError("the ControlNet has no control image: connect one to the apply node's image input")
    if vae is None:
        raise ValueError("this ControlNet reads the VAE-encoded control image: connect a VAE to the apply "
                         "node's vae input (core's Load VAE) or NextDiT VAE Loader to NextDiT ControlNet "
                         "Loader's vae input")
    factor = _factor(vae)
    height, width = latent_hw[0] * factor, latent_hw[1] * factor
    pixels = resize_cover(image.float()[:, :3], height, width)
    raw = vae.encode(pixels.movedim(1, -1))
    return FLUX.from_raw(raw.float().cpu())


def resize_cover(image: Tensor, height: int, width: int) -> Tensor:
    """(B, C, H, W) centre-cropped to the aspect height:width, then resized to exactly that size."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    if h * width > w * height:        # too tall: crop rows
        keep = round(w * height / width)
        top = (h - keep) // 2
        image = image[..., top:top + keep, :]
    elif h * width < w * height:
        keep = round(h * width / height)
        left = (w - keep) // 2
        image = image[..., left:left + keep]
    return F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def is_control(value) -> bool:
    return isinstance(value, ControlNetHandle)



