"""Classifier-free guidance with the official NewBie semantics, run as one packed forward.

``NextDiT_CLIP.forward_with_cfg`` in the official ``models/model.py`` (NewBie-image-Exp0.1), per
model evaluation at data-time t:
- t < cfg_trunc: v = v_u + cfg·(v_c − v_u); if renorm_cfg > 0 the guided velocity is scaled down,
  per sample over (C, H, W), to at most renorm_cfg·‖v_c‖;
- otherwise the conditional velocity alone.
The conditional and unconditional prompts go through ONE forward: their captions are padded to the
longest with a mask and the model packs the real tokens, so nothing is computed on padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..text.conditioning import PromptBatch, pack


def combine_cfg(v_cond: Tensor, v_uncond: Tensor, cfg: float, renorm_cfg: float) -> Tensor:
    """Guided velocity (B, C, h, w) from the two branches, with the official optional renorm."""
    guided = v_uncond + cfg * (v_cond - v_uncond)
    if renorm_cfg > 0:
        dims = tuple(range(1, guided.ndim))
        max_norm = renorm_cfg * torch.linalg.vector_norm(v_cond, dim=dims, keepdim=True)
        norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
        # Official: `if ‖v‖ >= max: v *= max/‖v‖`, here per sample (the official code assumes batch 1).
        scale = torch.where(norm >= max_norm, max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny), 1.0)
        guided = guided * scale
    return guided


def cfg_active(t: float, cfg: float, cfg_trunc: float) -> bool:
    """Whether this evaluation runs the unconditional branch: cfg ≠ 1 and t < cfg_trunc (data-time)."""
    return cfg != 1.0 and t < cfg_trunc


class GuidedVelocity:
    """``velocity(x, t)`` for the solvers: the model with CFG and/or a distilled guidance scale.

    positive / negative: one PromptBatch of the latent batch size per CONDITIONING entry (entries
    are averaged). ``guidance`` > 0 is fed to the guidance embedder of distilled weights.
    """

    def __init__(self, model, positive: list[PromptBatch], negative: list[PromptBatch] | None,
                 cfg: float, renorm_cfg: float, cfg_trunc: float, guidance: float = 0.0):
        if cfg != 1.0 and not negative:
            raise ValueError(f"cfg {cfg} needs a negative conditioning; connect one or set cfg to 1")
        device = model.device
        self.model = model
        self.cfg, self.renorm_cfg, self.cfg_trunc = float(cfg), float(renorm_cfg), float(cfg_trunc)
        self.batch = positive[0].size
        self.n_pos = len(positive)
        self.cond_only = pack(positive).to(device)
        self.both = pack(positive + negative).to(device) if cfg != 1.0 else None
        self.guidance = float(guidance) if guidance > 0 else None

    def _forward(self, x: Tensor, t: float, prompts: PromptBatch) -> Tensor:
        """Model velocities for every prompt entry: (entries, B, C, h, w) from one forward."""
        entries = prompts.size // self.batch
        x_all = x.repeat(entries, 1, 1, 1) if entries > 1 else x
        n = x_all.shape[0]
        t_all = torch.full((n,), t, device=x.device, dtype=torch.float32)
        g_all = None if self.guidance is None else torch.full((n,), self.guidance, device=x.device,
                                                              dtype=torch.float32)
        v = self.model(x_all, t_all, prompts.feats, prompts.mask, prompts.pooled, g_all)
        return v.unflatten(0, (entries, self.batch))

    def __call__(self, x: Tensor, t: float) -> Tensor:
        if not cfg_active(t, self.cfg, self.cfg_trunc):
            return self._forward(x, t, self.cond_only).mean(0)
        v = self._forward(x, t, self.both)
        v_cond, v_uncond = v[:self.n_pos].mean(0), v[self.n_pos:].mean(0)
        return combine_cfg(v_cond, v_uncond, self.cfg, self.renorm_cfg)
