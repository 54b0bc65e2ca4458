"""Prompt weights on the joint attention: how much the image attends to each caption token.

A CONDITIONING from ``NextDiT Text Encode`` carries one weight per caption token
(``token_weights``; ``prompting/weights.py`` reads the ``(text:1.3)`` syntax). In every joint
layer, for the image queries of a weighted sample, the attention logit of caption token j gets
log(w_j) added: its softmax share is multiplied by w_j before renormalising, so weight 0 removes
the token from the image's view and weight 1 leaves it as it is. The caption tokens' own queries
and the image-to-image logits are untouched.

Samples whose tokens all weigh 1 (every sample when no prompt has weights) run the plain attention;
with no weights anywhere the entry is not attached at all, so the forward is the plain one bit for
bit. A weighted sample's attention is computed here (one SDPA call per sample with the bias as its
mask) rather than by the entries attached before; NAG, attached after, composes with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dit.ops import Segments

ENTRY = "prompt_weights"       # its name on the model's seam while sampling
_SCRATCH = "prompt_weights"     # the per-sample biases of one forward call


class PromptWeights:
    """The seam entry (point ``attention``); ``prepare`` gives it each forward's weights."""

    def __init__(self):
        self.weights: Tensor | None = None    # (B, L) of the next forward, real tokens first

    def prepare(self, t: float, conditional, prompts) -> None:
        self.use(prompts.weights)

    def use(self, weights: Tensor | None) -> None:
        """The next forward's token weights (B, L), real tokens first, or None."""
        self.weights = None if weights is None or bool((weights == 1).all()) else weights

    def attention(self, index: int, q: Tensor, k: Tensor, v: Tensor, segments: Segments, ctx, run) -> Tensor:
        layout = ctx.layout
        if self.weights is None or segments is not layout.joint:   # not this model's own joint call
            return run(q, k, v, segments)
        biases = ctx.scratch.get(_SCRATCH)
        if biases is None:
            biases = ctx.scratch[_SCRATCH] = self._biases(layout, q.dtype, q.device)
        if all(bias is None for bias in biases):
            return run(q, k, v, segments)
        outs = []
        for (qs, ks, vs), bias in zip(zip(*(x.split(segments.lengths) for x in (q, k, v))), biases):
            n_rep = qs.shape[1] // ks.shape[1]
            qs, ks, vs = (x.transpose(0, 1)[None] for x in (qs, ks, vs))
            if n_rep > 1:
                ks, vs = ks.repeat_interleave(n_rep, dim=1), vs.repeat_interleave(n_rep, dim=1)
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=bias)[0].transpose(0, 1))
        return torch.cat(outs).flatten(1)

    def _biases(self, layout, dtype: torch.dtype, device: torch.device) -> list[Tensor | None]:
        """Per sample the (L, L) additive logit bias (log w on image rows × caption columns), or
        None for a sample whose tokens all weigh 1."""
        biases = []
        n_img = layout.images.lengths[0]
        for row, n_cap in enumerate(layout.captions.lengths):
            weights = self.weights[row, :n_cap].to(device=device, dtype=torch.float32)
            if bool((weights == 1).all()):
                biases.append(None)
                continue
            bias = torch.zeros(n_cap + n_img, n_cap + n_img, device=device, dtype=torch.float32)
            bias[n_cap:, :n_cap] = torch.log(weights)        # log 0 = -inf: the token is out of view
            biases.append(bias.to(dtype))
        return biases
