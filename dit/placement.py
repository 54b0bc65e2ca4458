"""Where a Next-DiT's weights live while it computes, outside a host's memory manager.

``place(model, device, memory_required)`` puts the model on ``device`` as its offload mode
(``dit/settings.py``) asks: "none" whole on the device, "blocks" blocks streamed, "auto" whole
when it fits in free memory (after the activations), else the blocks that do not fit are
streamed. Inside ComfyUI the memory manager decides instead (``nodes/host/memory.py``), with the
same offload mode and the same helpers.
"""

from __future__ import annotations

import torch
from torch import nn

from . import offload
from .model import repeated_blocks
from .settings import OFFLOAD_MODES

_MODE = "offload_mode"        # its name on the model's seam (a structural LoRA copy inherits it)
_HEADROOM = 512 * 2 ** 20     # bytes left free for the allocator and small buffers (auto mode)


def set_offload_mode(module: nn.Module, mode: str) -> None:
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload {mode!r} is not one of {', '.join(OFFLOAD_MODES)}")
    module.seam.attach(_MODE, mode, replace=True)


def offload_mode(module: nn.Module) -> str:
    seam = getattr(module, "seam", None)
    return "auto" if seam is None else seam.get(_MODE, "auto")


def dit_activation_bytes(params, batch: int, latent_hw: tuple[int, int], cap_len: int, dtype_bytes: int = 2) -> int:
    """Rough peak activation memory of one DiT forward: the widest per-token tensors of a block
    (SwiGLU's three ffn-wide tensors plus a few dim-wide ones) over every token of the batch."""
    tokens = batch * (latent_hw[0] * latent_hw[1] // params.patch_size ** 2 + cap_len)
    return tokens * (3 * params.ffn_dim + 8 * params.dim) * dtype_bytes


def place(module: nn.Module, device: torch.device, memory_required: int = 0) -> None:
    """Ready ``module`` to compute on ``device`` with ``memory_required`` bytes of activations on
    top, as its offload mode asks (module docstring); a module without blocks goes whole."""
    mode = offload_mode(module) if repeated_blocks(module) else "none"
    if mode == "blocks":
        if not offload.is_offloaded(module):
            offload.offload_blocks(module, device)
        return
    if on_device(module, device) and not offload.is_offloaded(module):
        return
    if mode == "auto" and device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] + bytes_on(module, device)
        size = offload.tensor_bytes(module)
        if size + memory_required + _HEADROOM > free:
            offload.offload_blocks(module, device, budget=max(0, free - memory_required - _HEADROOM
                                                              - non_block_bytes(module) - stream_room(module)))
            return
    offload.remove_offload(module, device)


def on_device(module, device) -> bool:
    return all(same_device(t.device, device) for t in [*module.parameters(), *module.buffers()])


def same_device(a, b) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def bytes_on(module, device) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]
               if same_device(t.device, device))


def stream_room(module) -> int:
    """Device memory the streamed blocks need: the running block and the prefetched next one."""
    return 2 * max((offload.tensor_bytes(b) for b in repeated_blocks(module)), default=0)


def non_block_bytes(module) -> int:
    return offload.tensor_bytes(module) - sum(offload.tensor_bytes(b) for b in repeated_blocks(module))
