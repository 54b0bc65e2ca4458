"""ControlNet training of a Next-DiT: the DiT frozen, a control network (controlnet/model.py)
trained with the base model's rectified-flow objective on cached latents, control latents and
text features.

Initialisation (``init``): ``dit`` copies the DiT's first joint layers into the control blocks and
its patch embedding into the control embedding, as ControlNet-style trainers start from the base
model's own blocks; ``random`` starts them at random. The output projections start at zero either
way, so step 0 samples exactly what the DiT alone samples. A path to a ControlNet file instead
fine-tunes that network (its blocks and target layers kept; it must fit the DiT).

Everything else is train-lora's (``training/lora_training.py``): global batches of one bucket, all
randomness of a micro-batch from one generator seeded by (seed, micro-batch number) so runs resume
exactly and N processes with batch B compute what one process with batch N·B does, caption dropout,
the logit-normal shifted times, gradient clipping, the learning-rate schedule, DDP over the
trainable parameters (here the control network's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..controlnet.apply import ActiveControl, controls_attached
from ..controlnet.model import ControlNetParams, NextDiTControlNet
from .controlnet_inputs import ControlSet
from .distributed import Distributed
from .flow import OFFICIAL_TIME_SHIFT
from .lora_training import LoraTraining

INITS = ("dit", "random")


@dataclass(frozen=True)
class ControlNetTrainingConfig:
    blocks: int = 2                          # control blocks
    init: str = "dit"                        # "dit" (copies of the first joint layers) or "random"
    steps: int = 1000
    batch_size: int = 1
    accumulation: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 0
    schedule: str = "constant"
    optimizer: str = "adamw"
    caption_dropout: float = 0.1
    time_shift: float = OFFICIAL_TIME_SHIFT
    grad_clip: float = 1.0
    checkpointing: bool = True
    seed: int = 0

    def __post_init__(self):
        if min(self.blocks, self.steps, self.batch_size, self.accumulation) < 1:
            raise ValueError("blocks, steps, batch size and accumulation must be at least 1")
        if self.init not in INITS and not str(self.init).endswith(".safetensors"):
            raise ValueError(f"init must be one of {', '.join(INITS)} or a ControlNet .safetensors file to "
                             f"fine-tune; got {self.init!r}")
        if self.schedule not in ("constant", "cosine") or self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"schedule must be constant or cosine and optimizer adamw or sgd; got "
                             f"{self.schedule!r}, {self.optimizer!r}")
        if not 0 <= self.caption_dropout < 1 or self.time_shift <= 0 or self.lr <= 0:
            raise ValueError("caption dropout must be in [0, 1), the time shift and learning rate positive")


def new_controlnet(model, config: ControlNetTrainingConfig) -> NextDiTControlNet:
    """A fresh fp32 control network for ``model`` (see ``init`` in the module docstring), seeded by
    ``config.seed`` without touching the global RNG."""
    if config.init not in INITS:
        from ..controlnet.apply import check_fits
        from ..controlnet.files import load_controlnet

        net = load_controlnet(config.init)
        check_fits(net, model)
        return net.float().to(model.device).requires_grad_(True)   # the loader gives inference weights
    if config.blocks > len(model.layers):
        raise ValueError(f"{config.blocks} control blocks: the Next-DiT has only {len(model.layers)} joint layers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = NextDiTControlNet(ControlNetParams.like(model.params, config.blocks))
    if config.init == "dit":
        with torch.no_grad():
            net.control_x_embedder.load_state_dict(model.x_embedder.state_dict())
            for block, layer in zip(net.control_blocks, model.layers):
                block.load_state_dict(layer.state_dict())
    return net.float().to(model.device)


class _Controlled(nn.Module):
    """The frozen DiT running with the control network being trained: the module DDP wraps, so
    the network's gradients are averaged over the processes."""

    def __init__(self, model, net: NextDiTControlNet):
        super().__init__()
        self.model, self.net = model, net

    def forward(self, hint: Tensor, *inputs) -> Tensor:
        with controls_attached(self.model, [ActiveControl(self.net, hint, 1.0)]):
            return self.model(*inputs)


class ControlNetTraining(LoraTraining):
    """A control network being trained for ``model`` (frozen) on ``controls``; the optimizer step,
    schedule and progress are train-lora's."""

    name = "train-controlnet"

    def __init__(self, model: nn.Module, controls: ControlSet, config: ControlNetTrainingConfig,
                 job: Distributed):
        self.model, self.controls, self.data, self.config, self.job = model, controls, controls.data, config, job
        model.requires_grad_(False)
        self.net = new_controlnet(model, config)
        self._start(list(self.net.parameters()), _Controlled(model, self.net))

    def _predict(self, items, x: Tensor, t: Tensor, text) -> Tensor:
        hint = self.controls.control_latents(items).to(x.device)
        return self.wrapped(hint, x, t, text.feats, text.mask, text.pooled)

    def state_dict(self) -> dict:
        return {"step": self.step, "config": asdict(self.config),
                "controlnet": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        free = ("steps", "checkpointing")   # may change on resume: neither changes what a step computes
        saved = {k: v for k, v in state["config"].items() if k not in free}
        ours = {k: v for k, v in asdict(self.config).items() if k not in free}
        if saved != ours:
            changed = sorted(k for k in ours if saved.get(k) != ours[k])
            raise ValueError(f"the training state was saved with other settings ({', '.join(changed)}); resume "
                             f"with the settings it was started with (only --steps and checkpointing may change)")
        with torch.no_grad():
            self.net.load_state_dict(state["controlnet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])

