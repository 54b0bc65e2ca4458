"""Running control networks inside a Next-DiT's forward, through its seam.

One seam entry (``ControlResiduals``, name ``controlnet``) holds the controls active for the next
forward call: each a network, its control latent for every sample of the call and a strength per
sample. At joint layer 0's input it runs every active network on the tokens entering that layer;
after each joint layer it adds the residuals meant for that layer to the image rows. Every network
reads the same layer-0 input, so several networks add exactly the sum of their residuals, and a
control whose strengths are all 0 is not run at all (strength 0 is exactly no ControlNet).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from torch import Tensor

from .model import NextDiTControlNet

ENTRY = "controlnet"


@dataclass
class ActiveControl:
    """A network with its normalised control latent (N, C, h, w) for the N samples of a forward
    call (or 1, shared) and its strength per sample (a number, or a (N,) tensor)."""
    net: NextDiTControlNet
    hint: Tensor
    strength: float | Tensor = 1.0

    def is_off(self) -> bool:
        if isinstance(self.strength, Tensor):
            return not bool(self.strength.ne(0).any())
        return self.strength == 0


class ControlResiduals:
    """The seam entry (module docstring)."""

    def __init__(self, model):
        self.n_layers = len(model.layers)
        self.active: list[ActiveControl] = []

    def layer_input(self, index: int, joint: Tensor, ctx) -> Tensor:
        if index != 0:
            return joint
        by_layer: dict[int, Tensor] = {}
        batch = ctx.c.shape[0]
        tokens = ctx.layout.images.total // batch
        for control in self.active:
            if control.is_off():
                continue
            hint = control.hint.to(joint.device)
            if hint.shape[0] != batch:
                hint = hint.expand(batch, -1, -1, -1) if hint.shape[0] == 1 else hint
            if tuple(hint.shape[2:]) != tuple(ctx.latent_hw):
                raise ValueError(f"the control latent is {tuple(hint.shape[2:])} but the sampled latent is "
                                 f"{tuple(ctx.latent_hw)}")
            scale = _row_scale(control.strength, batch, tokens, joint)
            layers = control.net.params.target_layers(self.n_layers)
            for layer, residual in zip(layers, control.net(hint, joint, ctx)):
                residual = residual.to(joint.dtype) * scale
                by_layer[layer] = residual if layer not in by_layer else by_layer[layer] + residual
        ctx.scratch[ENTRY] = by_layer
        return joint

    def layer_output(self, index: int, joint: Tensor, ctx) -> Tensor:
        residual = ctx.scratch.get(ENTRY, {}).get(index)
        if residual is None:
            return joint
        return joint.index_add(0, ctx.layout.img_index, residual)


def _row_scale(strength, batch: int, tokens: int, like: Tensor):
    if not isinstance(strength, Tensor):
        return float(strength)
    strength = strength.to(like.device, like.dtype).reshape(-1)
    if strength.numel() == 1:
        strength = strength.expand(batch)
    return strength.repeat_interleave(tokens).unsqueeze(1)     # (B*N, 1)


def check_fits(net: NextDiTControlNet, model) -> None:
    problem = net.params.mismatch(model.params)
    if problem:
        raise ValueError(f"this ControlNet does not fit the Next-DiT: {problem}; use a ControlNet trained "
                         f"for this model")


def prepare(net: NextDiTControlNet, model) -> NextDiTControlNet:
    """The network on the model's device in its compute dtype (moved in place)."""
    check_fits(net, model)
    weight = net.control_x_embedder.weight
    if weight.device != model.device or weight.dtype != model.compute_dtype:
        net.to(device=model.device, dtype=model.compute_dtype)
    return net


@contextlib.contextmanager
def controls_attached(model, active: list[ActiveControl] | None = None) -> Iterator[ControlResiduals]:
    """The seam entry attached for the block (its ``active`` list may change between calls);
    detached afterwards. Nested use (a core sampler inside a sampler) reuses the entry."""
    existing = model.seam.get(ENTRY)
    if existing is not None:
        previous = existing.active
        existing.active = list(active or [])
        try:
            yield existing
        finally:
            existing.active = previous
        return
    entry = model.seam.attach(ENTRY, ControlResiduals(model))
    entry.active = list(active or [])
    try:
        yield entry
    finally:
        model.seam.detach(ENTRY)


def packed_controls(chains: list[list], batch: int, latent_hw: tuple[int, int], is_active) -> list[ActiveControl]:
    """The controls of a forward that packs several CONDITIONING entries, ``batch`` samples each, in
    order: ``chains[k]`` is entry k's chain of handles (controlnet/handle.py). A handle shared by
    several entries (core's apply node gives positive and negative the same one) runs once over the
    whole batch, with its strength on the rows of the entries that carry it and 0 elsewhere.
    ``is_active(handle)``: whether its start/end percent holds at this evaluation."""
    import torch

    seen: list = []
    for chain in chains:
        for handle in chain:
            if all(handle is not other for other in seen) and is_active(handle):
                seen.append(handle)
    active = []
    for handle in seen:
        rows = [float(handle.strength) if any(h is handle for h in chain) else 0.0
                for chain in chains for _ in range(batch)]
        hint = handle.latent(latent_hw)
        hint = hint.expand(batch, -1, -1, -1) if hint.shape[0] == 1 else hint
        if hint.shape[0] != batch:
            raise ValueError(f"the control image batch holds {hint.shape[0]} images but {batch} are sampled; "
                             f"use one control image or one per image")
        active.append(ActiveControl(handle.net, hint.repeat(len(chains), 1, 1, 1), torch.tensor(rows)))
    return active
