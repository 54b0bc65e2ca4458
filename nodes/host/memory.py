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
from ...dit.placement import (bytes_on, dit_activation_bytes, non_block_bytes, offload_mode, on_device, place,
                              set_offload_mode, stream_room)
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


def use_model(module, memory_required: int = 0, attachments: dict | None = None) -> None:
    """Make ``module`` ready to compute on the pack's device, with ``memory_required`` bytes of
    activations on top (ComfyUI: through its memory manager; headless: ``dit.placement.place``).

    attachments: where the module's patcher is kept (default ``module.attachments``, a NextDiT's;
    the VAE node passes its NextDiTVAE's)."""
    comfy = _comfy()
    device = devices.torch_device()
    if comfy is None:
        place(module, device, memory_required)
        return
    mm, _ = comfy
    slot = module.attachments if attachments is None else attachments
    patcher = slot.get(_PATCHER)
    if patcher is None or patcher.model is not module:    # a LoRA copy has its own patcher
        patcher = make_patcher(module, device, mm.unet_offload_device())
        slot[_PATCHER] = patcher
    mm.load_models_gpu([patcher], memory_required=memory_required)


# ---- the ModelPatcher subclass (built only inside ComfyUI) ----------------------------------------

_PATCHER_CLASS = None


def make_patcher(module, load_device, offload_device):
    """A `PackModelPatcher` for ``module`` (ComfyUI must be importable)."""
    global _PATCHER_CLASS
    if _PATCHER_CLASS is None:
        _PATCHER_CLASS = _define_patcher_class(_comfy()[1].ModelPatcher)
    return _PATCHER_CLASS(module, load_device, offload_device)


def _define_patcher_class(ModelPatcher):
    class PackModelPatcher(ModelPatcher):
        """ComfyUI's ModelPatcher for a pack module: whole-module moves, or block streaming."""

        def __init__(self, module, load_device, offload_device):
            super().__init__(module, load_device, offload_device, size=offload.tensor_bytes(module))
            self._set_loaded(bytes_on(module, load_device) if not offload.is_offloaded(module)
                             else self._streamed_resident())

        def _set_loaded(self, nbytes: int) -> None:
            # What ComfyUI's ModelPatcher reads from the module it wraps.
            self.model.model_loaded_weight_memory = nbytes
            self.model.model_lowvram = offload.is_offloaded(self.model)

        def _streamed_resident(self) -> int:
            state = offload.offload_state(self.model)
            streamed = sum(offload.tensor_bytes(b) for b in state.streamed) if state else 0
            return self.size - streamed + stream_room(self.model)

        def _stream(self, device, budget: int) -> None:
            """Stream the blocks that do not fit in ``budget`` bytes (which also pays for the two
            block copies in flight); what is resident plus those copies counts as loaded."""
            room = stream_room(self.model)
            block_budget = max(0, budget - non_block_bytes(self.model) - room)
            self._set_loaded(offload.offload_blocks(self.model, device, budget=block_budget) + room)

        def _can_stream(self) -> bool:
            return bool(repeated_blocks(self.model)) and offload_mode(self.model) != "none"

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            device = device_to if device_to is not None else self.load_device
            budget = None if (full_load or lowvram_model_memory == 0) else lowvram_model_memory
            if offload_mode(self.model) == "blocks":
                budget = 0
            if budget is None or budget >= self.size or not self._can_stream():
                offload.remove_offload(self.model, device)
                self._set_loaded(self.size)
                return
            self._stream(device, budget)

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            before = self.loaded_size()
            if before >= self.size and on_device(self.model, device_to):
                return 0
            target = before + extra_memory
            self.load(device_to, lowvram_model_memory=0 if target >= self.size else target)
            return self.loaded_size() - before

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            before = self.loaded_size()
            if not self._can_stream() or before == 0:
                return 0
            self._stream(self.load_device, before - memory_to_free)
            freed = before - self.loaded_size()
            log.info("NextDiT: %.2f GB of block weights moved to the CPU for other models", freed / 1e9)
            return freed

        def detach(self, unpatch_all=True):
            offload.remove_offload(self.model, self.offload_device)
            self._set_loaded(0)
            return self.model

        def current_loaded_device(self):
            return self.load_device if self.loaded_size() > 0 else self.offload_device

    return PackModelPatcher
