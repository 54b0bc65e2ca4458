"""The pack's models in ComfyUI's memory manager, and the same placement headless.

Inside ComfyUI, `comfy.model_management` keeps a list of loaded models; before it loads one it
unloads others (fully or in part) until the new one fits. The pack takes part through
`use_model(module, memory_required)`, called right before a model computes:

- the module is wrapped once in `PackModelPatcher`, a subclass of ComfyUI's own `ModelPatcher`,
  and handed to `comfy.model_management.load_models_gpu`, which frees core models (or other pack
  models) as needed, then loads ours;
- when core later needs the memory, the manager asks our patcher to unload: `partially_unload`
  switches the DiT to streaming its blocks from the CPU (dit/offload.py), `detach` moves it to
  the CPU. When the manager grants less memory than the DiT needs (low VRAM), `load` streams the
  blocks that do not fit instead of failing.

The patcher is ``nodes/host/patcher.py``'s ``PackModelPatcher``.

Headless, `use_model` places the module with `dit.placement.place`, honouring its offload mode.
"""

from __future__ import annotations

import logging

import torch

from ...dit.model import repeated_blocks
from ...dit.placement import dit_activation_bytes, place, set_offload_mode
from ...dit.settings import OFFLOAD_MODES
from ...sampling.memory_check import memory_problem, sampling_memory
from ...vae.tiled import free_memory_bytes
from . import devices
from .patcher import patcher_class

log = logging.getLogger(__name__)

_PATCHER = "host_patcher"   # key in the owner's slot; the module keeps its patcher alive


def _comfy():
    """(model_management, model_patcher) inside ComfyUI, else None."""
    try:
        import comfy.model_management as mm
        import comfy.model_patcher as mp
    except ImportError:
        return None
    return mm, mp


def storage_device(mode: str):
    """Where a loader should put the weights: the CPU inside ComfyUI (the manager moves them when
    they are used, as core does with its offload device) and for "blocks"; else the device."""
    comfy = _comfy()
    if comfy is not None:
        return comfy[0].unet_offload_device()
    return torch.device("cpu") if mode == "blocks" else devices.torch_device()


def load_for_device(load, mode: str):
    """``load(storage_device, compute_device) -> module``, called with the devices for ``mode``;
    the module gets the offload mode. Headless "auto" falls back to CPU storage (the blocks then
    stream at sampling time) when the whole model does not fit on the GPU."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload {mode!r} is not one of {', '.join(OFFLOAD_MODES)}")
    compute, storage = devices.torch_device(), storage_device(mode)
    try:
        module = load(storage, compute)
    except torch.OutOfMemoryError:
        if mode != "auto" or storage.type == "cpu":
            raise
        torch.cuda.empty_cache()
        log.warning("the DiT does not fit on %s; keeping it in CPU memory and streaming its blocks", compute)
        module = load(torch.device("cpu"), compute)
    set_offload_mode(module, mode)
    return module


def _activation_estimate(model, positive, negative, width: int, height: int, cfg: float):
    """(CFG branches, batch -> the DiT's activation peak for a forward over that many latents)."""
    def longest(conditioning) -> int:
        return max((int(entry[0].shape[1]) for entry in conditioning or () if hasattr(entry[0], "shape")), default=0)

    branches = 2 if cfg != 1.0 and negative is not None else 1
    cap_len = max(longest(positive), longest(negative) if branches == 2 else 0)
    dtype_bytes = 4 if getattr(model, "compute_dtype", None) is None else model.compute_dtype.itemsize
    return branches, lambda batch: dit_activation_bytes(model.params, batch, (height // 8, width // 8),
                                                        cap_len, dtype_bytes)


def use_dit_for_sampling(model, positive, negative, width: int, height: int, batch_size: int, cfg: float) -> None:
    """`use_model` for a NextDiT about to sample, with its activation memory estimated from the
    sampling settings (both CFG branches run in one batch); then a request that cannot fit in
    what the device has left is refused (``sampling.memory_check``), before the first step."""
    branches, activations = _activation_estimate(model, positive, negative, width, height, cfg)
    use_model(model, activations(batch_size * branches), also=control_patchers(positive, negative))
    need = sampling_memory(activations, batch_size, branches, (height, width))
    device = devices.torch_device()
    problem = memory_problem(need, width=width, height=height, batch=batch_size, device=str(device),
                             available_device=free_memory_bytes(device),
                             available_host=free_memory_bytes(torch.device("cpu")))
    if problem is not None:
        raise MemoryError(problem)


def core_model_of(nextdit, base=None):
    """Inside ComfyUI the core MODEL of ``nextdit`` (for a LoRA'd copy: a clone of ``base``'s that
    runs the copy); headless None, since nothing there takes a MODEL."""
    if _comfy() is None:
        return None
    from .core_model import core_model, with_diffusion_model  # imports ComfyUI

    if base is None or base is nextdit:
        return core_model(nextdit)
    return with_diffusion_model(core_model(base), nextdit)


def unpatched_base(nextdit) -> None:
    """Inside ComfyUI, make sure ``nextdit``'s weights carry no core LoRA patches before a LoRA'd
    copy shares them (``core_model.release_weight_patches``); headless nothing patches them."""
    if _comfy() is None:
        return
    from .core_model import release_weight_patches  # imports ComfyUI

    release_weight_patches(nextdit)


def use_model(module, memory_required: int = 0, slot: dict | None = None, also: list | tuple = ()) -> None:
    """Make ``module`` ready to compute on the pack's device, with ``memory_required`` bytes of
    activations on top (ComfyUI: through its memory manager; headless: ``dit.placement.place``).

    Inside ComfyUI a Next-DiT is loaded through its core MODEL (``core_model.core_model``), so
    the manager sees one model however it is used (the pack's sampler, core's samplers, LoRA'd
    clones); other modules (the VAE) get a patcher of their own, kept in ``slot`` (the VAE
    node passes its NextDiTVAE's). ``also``: more patchers loaded in the same call (ControlNets,
    from ``host_patchers``), as core loads a sampler's additional models with the model."""
    comfy = _comfy()
    device = devices.torch_device()
    if comfy is None:
        place(module, device, memory_required)
        return
    mm, _ = comfy
    if repeated_blocks(module):
        from .core_model import core_model  # imports ComfyUI

        patchers = [core_model(module)]
    else:
        if slot is None:
            raise TypeError("use_model: a module that is not a Next-DiT needs a dict to keep its patcher in "
                            "(slot=)")
        patchers = host_patchers(module, slot)
    mm.load_models_gpu(patchers + [p for p in also if p not in patchers], memory_required=memory_required)


def host_patchers(module, slot: dict) -> list:
    """Inside ComfyUI ``[patcher]``: the patcher through which its memory manager loads, counts and
    unloads ``module`` (a pack module that is not a Next-DiT: the VAE, a ControlNet), made once and
    kept in ``slot``; headless ``[]`` (nothing manages memory there)."""
    comfy = _comfy()
    if comfy is None:
        return []
    patcher = slot.get(_PATCHER)
    if patcher is None:
        patcher = patcher_class()(_Hosted(module), devices.torch_device(), comfy[0].unet_offload_device())
        slot[_PATCHER] = patcher
    return [patcher]


def control_patchers(*conditionings) -> list:
    """The memory manager's patchers of every ControlNet the CONDITIONING lists carry (each once)."""
    found: list = []
    for conditioning in conditionings:
        for entry in conditioning or ():
            control = entry[1].get("control") if len(entry) > 1 and isinstance(entry[1], dict) else None
            for patcher in getattr(control, "get_models", lambda: [])():
                if patcher not in found:
                    found.append(patcher)
    return found


def core_vae_of(vae):
    """Inside ComfyUI the core VAE of a NextDiTVAE (``core_vae.core_vae``: the same autoencoder,
    loaded through the same patcher as the pack's VAE nodes); headless None, since nothing there
    takes a VAE."""
    if _comfy() is None:
        return None
    from .core_vae import core_vae  # imports ComfyUI

    return core_vae(vae, host_patchers(vae.model, vae.host_slot)[0])


class _Hosted(torch.nn.Module):
    """A pack module that is not a Next-DiT (the VAE), as core's ModelPatcher wraps it: a child,
    under a parent whose ``device`` attribute the patcher may set (diffusers modules have a
    read-only ``device`` property)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.device = None
