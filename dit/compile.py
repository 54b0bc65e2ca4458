"""Optional `torch.compile` of the Next-DiT's repeated blocks (the 40 blocks are > 98% of the time).

Only each block's `forward` is compiled, not the whole model: the top level (token packing, RoPE
tables) changes with every caption length and is cheap, and module hooks (block offloading,
LoRA) stay outside the compiled code. The compiled function is shared by every block of a class,
so the graph is traced once, not 40 times (parameters are inputs, not constants, in
torch >= 2.5's default `inline_inbuilt_nn_modules`).

The block's class is swapped for a subclass whose forward calls the compiled function, so the
change travels with the module object (a LoRA structural copy keeps it) and is undone by
`uncompile_blocks`. State-dict keys do not change.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .model import repeated_blocks

_COMPILED_CLASSES: dict[tuple, type] = {}


def _compiled_class(cls: type, options: tuple) -> type:
    key = (cls, options)
    if key not in _COMPILED_CLASSES:
        compiled: Callable = torch.compile(cls.forward, **dict(options))

        def forward(self, *args, **kwargs):
            # Guard on module hooks while tracing (dynamo skips those guards by default): blocks
            # sharing this compiled function may carry different LoRA hooks (lora/apply.py).
            with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
                return compiled(self, *args, **kwargs)

        _COMPILED_CLASSES[key] = type(f"Compiled{cls.__name__}", (cls,), {
            "forward": forward, "_uncompiled_class": cls,
            "__doc__": f"{cls.__name__} whose forward runs through torch.compile."})
    return _COMPILED_CLASSES[key]


def compile_blocks(model: nn.Module, **compile_options) -> nn.Module:
    """Compile the forward of every repeated block of ``model`` (in place; returns ``model``).

    compile_options go to `torch.compile` (e.g. ``mode="max-autotune-no-cudagraphs"``,
    ``backend="eager"`` to test the wiring). Compilation happens at the first forward.
    Calling it again with other options recompiles.
    """
    options = tuple(sorted(compile_options.items()))
    for block in repeated_blocks(model):
        base = getattr(type(block), "_uncompiled_class", type(block))
        block.__class__ = _compiled_class(base, options)
    return model


def uncompile_blocks(model: nn.Module) -> nn.Module:
    """Undo `compile_blocks` (in place; returns ``model``)."""
    for block in repeated_blocks(model):
        block.__class__ = getattr(type(block), "_uncompiled_class", type(block))
    return model


def is_compiled(model: nn.Module) -> bool:
    return any(hasattr(type(block), "_uncompiled_class") for block in repeated_blocks(model))
