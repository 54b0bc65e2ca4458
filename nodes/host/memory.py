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

Why a `ModelPatcher` subclass rather than a duck-typed `LoadedModel` entry: the manager calls
about twenty patcher methods and attributes, and that set grows with ComfyUI versions (hooks,
pins, dynamic VRAM). Inheriting keeps all the ones we do not care about working; we override only
the five that move weights or report what is loaded. We do not use core's own low-VRAM path
(per-layer weight casting): it needs `comfy.ops` layers, while the DiT's Linears are plain
`nn.Linear`, and block streaming is exact and tested (tests/test_gpu_memory.py).

Headless, `use_model` places the module with `dit.placement.place`, honouring its offload mode.
"""

from __future__ import annotations

import logging

import torch

from ...dit import offload
from ...dit.model import repeated_blocks
from ...dit.placement import dit_activation_bytes, non_block_bytes, offload_mode, place, set_offload_mode, stream_room
from ...dit.settings import OFFLOAD_MODES
from . import devices

log = logging.getLogger(__name__)

_PATCHER = "host_patcher"   # key in the owner's attachments; the module keeps its patcher alive


def _comfy():
    """(model_management, model_patcher) inside ComfyUI, else None."""
    try:
        import comfy.model_management as mm  # noqa: PLC0415
        import comfy.model_patcher as mp  # noqa: PLC0415
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


def use_dit_for_sampling(model, positive, negative, width: int, height: int, batch_size: int, cfg: float) -> None:
    """`use_model` for a NextDiT about to sample, with its activation memory estimated from the
    sampling settings (both CFG branches run in one batch)."""
    def longest(conditioning) -> int:
        return max((int(entry[0].shape[1]) for entry in conditioning or () if hasattr(entry[0], "shape")), default=0)

    branches = 2 if cfg != 1.0 and negative is not None else 1
    cap_len = max(longest(positive), longest(negative) if branches == 2 else 0)
    dtype_bytes = 4 if getattr(model, "compute_dtype", None) is None else model.compute_dtype.itemsize
    use_model(model, dit_activation_bytes(model.params, batch_size * branches, (height // 8, width // 8),
                                          cap_len, dtype_bytes))


def core_model_of(nextdit, base=None):
    """Inside ComfyUI the core MODEL of ``nextdit`` (for a LoRA'd copy: a clone of ``base``'s that
    runs the copy); headless None, since nothing there takes a MODEL."""
    if _comfy() is None:
        return None
    from .core_model import core_model, with_diffusion_model  # noqa: PLC0415 - imports ComfyUI

    if base is None or base is nextdit:
        return core_model(nextdit)
    return with_diffusion_model(core_model(base), nextdit)


def use_model(module, memory_required: int = 0, attachments: dict | None = None) -> None:
    """Make ``module`` ready to compute on the pack's device, with ``memory_required`` bytes of
    activations on top (ComfyUI: through its memory manager; headless: ``dit.placement.place``).

    Inside ComfyUI a Next-DiT is loaded through its core MODEL (``core_model.core_model``), so
    the manager sees one model however it is used (the pack's sampler, core's samplers, LoRA'd
    clones); other modules (the VAE) get a patcher of their own, kept in ``attachments`` (the VAE
    node passes its NextDiTVAE's)."""
    comfy = _comfy()
    device = devices.torch_device()
    if comfy is None:
        place(module, device, memory_required)
        return
    mm, _ = comfy
    if repeated_blocks(module):
        from .core_model import core_model  # noqa: PLC0415 - imports ComfyUI

        patcher = core_model(module)
    else:
        slot = module.attachments if attachments is None else attachments
        patcher = slot.get(_PATCHER)
        if patcher is None:
            patcher = make_patcher(_Hosted(module), device, mm.unet_offload_device())
            slot[_PATCHER] = patcher
    mm.load_models_gpu([patcher], memory_required=memory_required)


class _Hosted(torch.nn.Module):
    """A pack module that is not a Next-DiT (the VAE), as core's ModelPatcher wraps it: a child,
    under a parent whose ``device`` attribute the patcher may set (diffusers modules have a
    read-only ``device`` property)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.device = None


# ---- the ModelPatcher subclass (built only inside ComfyUI) ----------------------------------------

_PATCHER_CLASS = None


def make_patcher(model, load_device, offload_device):
    """A `PackModelPatcher` for ``model``: a core BaseModel around a Next-DiT, or a plain module
    (ComfyUI must be importable)."""
    return patcher_class()(model, load_device, offload_device)


def patcher_class():
    global _PATCHER_CLASS
    if _PATCHER_CLASS is None:
        _PATCHER_CLASS = _define_patcher_class(_comfy()[1].ModelPatcher)
    return _PATCHER_CLASS


def _define_patcher_class(ModelPatcher):
    from comfy.utils import get_attr  # noqa: PLC0415 - inside ComfyUI only

    class PackModelPatcher(ModelPatcher):
        """ComfyUI's ModelPatcher for a pack model: whole moves, or the Next-DiT's blocks streamed.

        ``model`` is a core BaseModel whose ``diffusion_model`` is a Next-DiT (the core MODEL), or
        a plain module without blocks (the VAE). Core's own machinery stays: clones, object
        patches, and weight patches (core LoRAs), which are applied to the weights where they
        rest before the blocks are planned, so streaming works on the patched weights."""

        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            super().__init__(model, load_device, offload_device, size=size or offload.tensor_bytes(model),
                             weight_inplace_update=weight_inplace_update)

        def _dit(self):
            """The Next-DiT whose blocks may stream (None for a plain module)."""
            dit = getattr(self.model, "diffusion_model", None)
            return dit if dit is not None and repeated_blocks(dit) else None

        def _set_loaded(self, nbytes: int) -> None:
            # What ComfyUI's ModelPatcher reads from the model it wraps.
            dit = self._dit()
            self.model.model_loaded_weight_memory = nbytes
            self.model.model_lowvram = dit is not None and offload.is_offloaded(dit)

        def _stream(self, device, budget: int) -> None:
            """Stream the blocks that do not fit in ``budget`` bytes (which also pays for the two
            block copies in flight); what is resident plus those copies counts as loaded."""
            dit = self._dit()
            room = stream_room(dit)
            outside = offload.tensor_bytes(self.model) - offload.tensor_bytes(dit)   # e.g. model_sampling
            block_budget = max(0, budget - non_block_bytes(dit) - outside - room)
            for name, child in self.model.named_children():
                if child is not dit:
                    child.to(device)
            self._set_loaded(offload.offload_blocks(dit, device, budget=block_budget) + outside + room)

        def _can_stream(self) -> bool:
            dit = self._dit()
            return dit is not None and offload_mode(dit) != "none"

        def _patch_weights(self) -> None:
            """Core's weight patches (LoRAs from core loaders), computed where each weight rests; the
            model remembers whose patches it carries, as core's own load does."""
            if self.model.current_weight_patches_uuid == self.patches_uuid:
                return
            for key in self.patches:
                weight = get_attr(self.model, key)
                if weight.element_size() == 1:
                    raise ValueError(f"{key}: core's LoRA patches cannot change weights stored in fp8; load "
                                     f"the Next-DiT with weight_dtype bf16/fp16/fp32, or use NextDiT LoRA "
                                     f"Loader (which works on fp8)")
                self.patch_weight_to_device(key, device_to=weight.device)
            self.model.current_weight_patches_uuid = self.patches_uuid

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            device = device_to if device_to is not None else self.load_device
            dit = self._dit()
            if dit is not None:
                offload.remove_offload(dit, None)      # patched weights replace parameters: plan after
            self._patch_weights()
            budget = None if (full_load or lowvram_model_memory == 0) else lowvram_model_memory
            if dit is not None and offload_mode(dit) == "blocks":
                budget = 0
            if budget is None or budget >= self.model_size() or not self._can_stream():
                if dit is not None:
                    offload.remove_offload(dit, device)
                self.model.to(device)
                self._set_loaded(self.model_size())
            else:
                self._stream(device, budget)
            self.model.device = device

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            before = self.loaded_size()
            if not self._can_stream() or before == 0:
                return 0
            self._stream(self.load_device, before - memory_to_free)
            freed = before - self.loaded_size()
            log.info("NextDiT: %.2f GB of block weights moved to the CPU for other models", freed / 1e9)
            return freed

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            dit = self._dit()
            if dit is not None and unpatch_weights:
                offload.remove_offload(dit, None)      # restored weights replace parameters too
            super().unpatch_model(device_to, unpatch_weights)

        def current_loaded_device(self):
            return self.load_device if self.loaded_size() > 0 else self.offload_device

    return PackModelPatcher
