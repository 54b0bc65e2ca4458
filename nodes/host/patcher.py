"""``PackModelPatcher``: ComfyUI's ModelPatcher for the pack's models (defined only inside ComfyUI).

Why a ``ModelPatcher`` subclass rather than a duck-typed ``LoadedModel`` entry: ComfyUI's memory
manager calls about twenty patcher methods and attributes, and that set grows with ComfyUI
versions (hooks, pins, dynamic VRAM). Inheriting keeps all the ones we do not care about working;
we override only those that move weights or report what is loaded. We do not use core's own
low-VRAM path (per-layer weight casting): it needs ``comfy.ops`` layers, while the DiT's Linears
are plain ``nn.Linear``, and block streaming is exact and tested (tests/test_gpu_memory.py).
"""

from __future__ import annotations

import logging

from ...dit import offload
from ...dit.model import repeated_blocks
from ...dit.placement import non_block_bytes, offload_mode, stream_room

log = logging.getLogger(__name__)

_PATCHER_CLASS = None


def patcher_class():
    """``PackModelPatcher``, defined on first use (it subclasses ComfyUI's ModelPatcher)."""
    global _PATCHER_CLASS
    if _PATCHER_CLASS is None:
        from comfy.model_patcher import ModelPatcher  # inside ComfyUI only

        _PATCHER_CLASS = _define_patcher_class(ModelPatcher)
    return _PATCHER_CLASS


def _define_patcher_class(ModelPatcher):
    from comfy.utils import get_attr  # inside ComfyUI only

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
                    stored = "fp8" if weight.is_floating_point() else "GGUF blocks"
                    raise ValueError(f"{key}: core's LoRA patches cannot change weights stored in {stored}; "
                                     f"load a bf16/fp16/fp32 Next-DiT file with weight_dtype bf16/fp16/fp32, "
                                     f"or use NextDiT LoRA Loader (which works on fp8 and GGUF models)")
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
