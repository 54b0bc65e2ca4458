"""A step cache: skip a Next-DiT's joint layers while their input barely changes between evaluations.

After TeaCache (Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
Model", arXiv 2411.19108), which decides from the change of the first block's modulated input,
and first-block caching (the "First Block Cache" of github.com/chengzeyi/ParaAttention), which
always runs the first block and reuses the other blocks' residual. Per model evaluation:

- the first joint layer runs; a forward pre-hook on its attention records its modulated input
  m = RMSNorm(x)·(1 + scale_msa(c)). The adaLN vector c carries the time, the guidance scale and
  the pooled Jina text embedding, so all three count, as the image and caption tokens do;
- when the relative L1 change mean|m − m_ref| / mean|m_ref| since the last full evaluation is
  below ``threshold``, the other joint layers are skipped: their residual from that evaluation
  (their output minus their input) is added to the first layer's output instead. Otherwise they
  run, and m and their residual become the new reference.

One decision covers the whole packed batch, so CFG's conditional and unconditional branches are
always computed or reused together. A different token layout (CFG truncation dropping the
unconditional branch, another set of prompts) forces a full evaluation. At threshold 0 nothing
is ever skipped and the evaluation runs exactly the uncached operations (the same result, bit
for bit). The decision reads one number back to the host per evaluation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor, nn

_ENTRY = "step_cache"   # its name on the model's seam


class StepCache:
    """The cache of one sampling run; ``evaluations`` and ``skipped`` count model evaluations."""

    def __init__(self, threshold: float):
        if not threshold >= 0:
            raise ValueError(f"step cache threshold must be 0 (off) or positive; got {threshold}")
        self.threshold = float(threshold)
        self.evaluations = 0
        self.skipped = 0
        self._modulated: Tensor | None = None         # set by the pre-hook during the first layer
        self._reference: tuple | None = None          # (layout key, m_ref, residual of the other layers)

    def record(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the first joint layer's attention: its input is m."""
        self._modulated = args[0]

    def joint_layers(self, run, joint: Tensor, ctx) -> Tensor:
        """The seam's ``joint_layers`` point: what the joint layers give for ``joint`` (T, dim),
        computed (``run``) or reused."""
        self.evaluations += 1
        self._modulated = None
        first = run(joint, 0, 1)
        modulated, self._modulated = self._modulated, None
        key = (ctx.layout.joint.lengths, tuple(joint.shape), joint.dtype)
        if self._reusable(key, modulated):
            self.skipped += 1
            return first + self._reference[2]
        out = run(first, 1)
        if modulated is not None and self.threshold > 0:
            self._reference = (key, modulated, out - first)
        return out

    def _reusable(self, key: tuple, modulated: Tensor | None) -> bool:
        if self.threshold == 0 or modulated is None or self._reference is None or self._reference[0] != key:
            return False
        reference = self._reference[1].float()
        change = (modulated.float() - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12)
        return float(change) < self.threshold

    def describe(self) -> str:
        share = 100.0 * self.skipped / max(self.evaluations, 1)
        return (f"step cache (threshold {self.threshold:g}): skipped {self.skipped} of {self.evaluations} "
                f"evaluations ({share:.0f} %)")


def apply_step_cache(model: nn.Module, threshold: float) -> StepCache:
    """Attach a fresh StepCache to ``model`` (a NextDiT); undo with ``remove_step_cache``."""
    if _ENTRY in model.seam:
        raise RuntimeError("this model already carries a step cache (another sampling run is using it)")
    cache = model.seam.attach(_ENTRY, StepCache(threshold))
    if len(model.layers):
        model.seam.hook(_ENTRY, model.layers[0].attention, pre=cache.record)
    return cache


def remove_step_cache(model: nn.Module) -> None:
    model.seam.detach(_ENTRY)


@contextlib.contextmanager
def step_cache(model: nn.Module, threshold: float) -> Iterator[StepCache]:
    """The model with a step cache for the duration of one sampling run."""
    cache = apply_step_cache(model, threshold)
    try:
        yield cache
    finally:
        remove_step_cache(model)
