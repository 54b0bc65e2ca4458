"""Block-by-block offloading of a Next-DiT: run the 7 GB bf16 NewBie DiT on a card with less memory.

`offload_blocks(model, device)` puts everything that is not a repeated block (embedders, final
layer: about 1% of the weights) on `device` and keeps the weights of the repeated blocks
(`context_refiner`, `noise_refiner`, `layers`) in CPU memory (pinned when `device` is CUDA, so
the copies run asynchronously). Each block's weights are copied to `device` by a forward pre-hook
just before the block runs and dropped by a forward post-hook right after it, so at most two
blocks (the one running and the next one, which is prefetched) hold device memory. With a
`budget` in bytes, the first blocks that fit stay resident on `device` and only the rest stream.

On CUDA the prefetch of block i+1 runs on a side stream while block i computes; whether it hides
the copy depends on PCIe bandwidth against the card's speed (benchmarks/gpu.py measures it).

The plan is the entry "offload" on the model's seam (``dit/seam.py``), whose module hooks are the
fetch and release above; it finds blocks by their parameters' identity: LoRA (``lora/apply.py``)
returns structural copies that share the same Parameter objects, and the copied hooks work for
them too (their own LoRA buffers are moved with the block, synchronously).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .model import repeated_blocks
from .params import BLOCK_LISTS

log = logging.getLogger(__name__)

_ENTRY = "offload"   # its name on the model's seam


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@dataclass
class _Offload:
    """Shared by the hooks of one offloaded model (and of its LoRA copies)."""

    device: torch.device
    streamed: list[nn.Module]                   # blocks whose weights live on the CPU, run order
    order: dict[int, int]                       # id(first parameter of a block) -> index in streamed
    stream: "torch.cuda.Stream | None" = None   # copy stream for the prefetch (CUDA only)
    prefetched: dict[int, tuple] = field(default_factory=dict)   # index -> (copies, event)
    homes: dict[int, tuple] = field(default_factory=dict)        # id(block) -> what fetch moved

    def index_of(self, block: nn.Module) -> int | None:
        first = next(block.parameters(), None)
        return None if first is None else self.order.get(id(first))

    def copy_block(self, block: nn.Module) -> dict[int, Tensor]:
        """Device copies of the block's parameters, keyed by id(parameter). Always a copy, even
        when the "device" is the CPU (tests), so the mechanism is the same everywhere."""
        return {id(p): p.data.to(self.device, non_blocking=True, copy=True) for p in block.parameters()}

    def prefetch(self, index: int) -> None:
        if index >= len(self.streamed) or index in self.prefetched:
            return
        block = self.streamed[index]
        if self.stream is None:
            self.prefetched[index] = (self.copy_block(block), None)
            return
        with torch.cuda.stream(self.stream):
            copies = self.copy_block(block)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.prefetched[index] = (copies, event)

    def fetch(self, block: nn.Module, args) -> None:
        """Pre-hook: the block's weights (and any buffers, e.g. LoRA's) onto the device."""
        index = self.index_of(block)
        if index is None:
            return
        if id(block) in self.homes:     # an earlier forward was interrupted in this block
            self.release(block, args, None)
        copies, event = self.prefetched.pop(index, (None, None))
        if copies is None:
            copies = self.copy_block(block)
        elif event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for copy in copies.values():       # allocated on the copy stream, used on this one
                copy.record_stream(current)
        homes = []
        for p in block.parameters():
            if id(p) in copies:
                homes.append((p, p.data))
                p.data = copies[id(p)]
        moved = []
        for module in block.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.device != self.device:
                    moved.append((module, name, buffer))
                    module._buffers[name] = buffer.to(self.device, non_blocking=True)
        self.homes[id(block)] = (homes, moved)
        self.prefetch(index + 1)

    def release(self, block: nn.Module, args, output):
        """Post-hook: the block's parameters back to their CPU tensors (device copies dropped)."""
        homes, moved = self.homes.pop(id(block), ((), ()))
        for p, home in homes:
            p.data = home
        for module, name, buffer in moved:
            module._buffers[name] = buffer
        return output


def offload_blocks(model: nn.Module, device: torch.device | str, budget: int = 0,
                   pin: bool | None = None) -> int:
    """Run ``model`` on ``device`` with its repeated blocks streamed from CPU memory.

    budget: bytes of block weights allowed to stay resident on ``device`` (the first blocks that
    fit); 0 streams them all. pin: page-lock the CPU copies (default: when ``device`` is CUDA).
    Returns the bytes of weights resident on ``device``. Calling it again re-plans (e.g. with
    another budget); `remove_offload` undoes it.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    remove_offload(model, None)
    pin = device.type == "cuda" if pin is None else pin
    blocks = repeated_blocks(model)
    for name, child in model.named_children():          # everything but the blocks: resident
        if name not in BLOCK_LISTS:
            child.to(device)
    for name, param in model.named_parameters(recurse=False):
        param.data = param.data.to(device)
    streamed, resident = [], 0
    for block in blocks:
        size = tensor_bytes(block)
        if not streamed and resident + size <= budget:
            block.to(device)
            resident += size
            continue
        block.to("cpu")
        if pin:
            for p in block.parameters():
                p.data = p.data.pin_memory()
            for module in block.modules():      # e.g. fp8 row scales, LoRA factors
                for name, buffer in module._buffers.items():
                    if buffer is not None:
                        module._buffers[name] = buffer.pin_memory()
        streamed.append(block)
    resident += sum(tensor_bytes(child) for name, child in model.named_children() if name not in BLOCK_LISTS)
    state = _Offload(device, streamed, {id(next(b.parameters())): i for i, b in enumerate(streamed)},
                     torch.cuda.Stream(device) if device.type == "cuda" else None)
    model.seam.attach(_ENTRY, state)
    for block in streamed:
        model.seam.hook(_ENTRY, block, pre=state.fetch, post=state.release)
    log.info("block offload on %s: %d of %d blocks streamed from %s memory, %.2f GB resident",
             device, len(streamed), len(blocks), "pinned CPU" if pin else "CPU", resident / 1e9)
    return resident


def offload_state(model: nn.Module) -> _Offload | None:
    """The model's streaming plan, or None when its blocks are not streamed."""
    seam = getattr(model, "seam", None)
    return None if seam is None else seam.get(_ENTRY)


def is_offloaded(model: nn.Module) -> bool:
    return offload_state(model) is not None


def remove_offload(model: nn.Module, device: torch.device | str | None = "cpu") -> None:
    """Remove the hooks; then move the whole model to ``device`` (None: leave weights where they are)."""
    state = offload_state(model)
    if state is not None:
        state.prefetched.clear()
        for block in repeated_blocks(model):     # a forward interrupted inside a block: its weights back home
            state.release(block, (), None)
        model.seam.detach(_ENTRY)
    if device is not None:
        model.to(device)


def streamed_block_count(model: nn.Module) -> int:
    state = offload_state(model)
    return 0 if state is None else len(state.streamed)
