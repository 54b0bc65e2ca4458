"""LoRA training of a Next-DiT: low-rank adapters (``peft``) on the attention and MLP linears,
trained with the base model's rectified-flow objective on cached latents and text features.

One optimizer step: ``accumulation`` micro-batches, each a global batch of one bucket
(``training/buckets.py``) of which this process takes its rows (``training/distributed.py``).
For each micro-batch the data-times, noise and caption dropout of the whole global batch come
from one generator seeded by (seed, micro-batch number), so the run is reproducible, a resumed run
continues exactly, and N processes with batch B compute what one process with batch N·B does.
Loss: ``training/flow.py`` (x_t = t·data + (1 − t)·noise, velocity target, logit-normal t with the
official time shift). Caption dropout replaces both encoders' texts by "" (the empty prompt CFG
uses as its negative); the official training blanked only Gemma's, so its unconditional branch
still saw the caption through Jina.

Prior preservation (``prior_images.py``): with a prior set, every micro-batch is ``batch_size``
images of the data and ``prior_batch`` images of the prior set (each drawn by its own bucketed
order, its times, noise and dropout from a generator of its own), and the loss is the data's mean
plus ``prior_weight`` × the prior's mean, as DreamBooth's. The data's share draws exactly what it
draws without a prior set, so ``prior_weight`` 0 trains exactly the plain LoRA.

Precision: the frozen base weights stay in their dtype (bf16 on GPUs, fp32 on the CPU); the
adapters train in fp32, and on a GPU the forward runs under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..dit.params import LORA_TARGETS
from ..files.atomic import atomic_path
from ..lora.save import LowRankPair
from ..text.conditioning import pack, prompt_batches
from .buckets import BatchOrder
from .distributed import Distributed
from .flow import OFFICIAL_TIME_SHIFT, logit_normal_times, noised, velocity_loss
from .lora_inputs import TrainingSet

log = logging.getLogger(__name__)

ADAPTER = "default"   # peft's adapter name


@dataclass(frozen=True)
class LoraTrainingConfig:
    rank: int = 16
    alpha: float | None = None               # None: alpha = rank (scale 1)
    targets: tuple[str, ...] = LORA_TARGETS  # Linear name suffixes (every block)
    steps: int = 1000                        # optimizer steps
    batch_size: int = 1                      # images per process per micro-batch
    accumulation: int = 1                    # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 0                          # steps of linear warm-up
    schedule: str = "constant"               # after warm-up: "constant" or "cosine" (to 0)
    optimizer: str = "adamw"                 # or "sgd" (plain gradient steps)
    caption_dropout: float = 0.1
    time_shift: float = OFFICIAL_TIME_SHIFT
    grad_clip: float = 1.0                   # max gradient norm (0: no clipping)
    checkpointing: bool = True               # recompute block activations in backward
    seed: int = 0
    prior_weight: float = 1.0                # loss weight of the prior share (with a prior set)
    prior_batch: int = 0                     # prior images per process per micro-batch (0: batch_size)

    def __post_init__(self):
        if min(self.rank, self.steps, self.batch_size, self.accumulation) < 1:
            raise ValueError("rank, steps, batch size and accumulation must be at least 1")
        if self.schedule not in ("constant", "cosine") or self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"schedule must be constant or cosine and optimizer adamw or sgd; got "
                             f"{self.schedule!r}, {self.optimizer!r}")
        if not 0 <= self.caption_dropout < 1 or self.time_shift <= 0 or self.lr <= 0:
            raise ValueError("caption dropout must be in [0, 1), the time shift and learning rate positive")
        if not self.targets:
            raise ValueError("LoRA targets are empty: name at least one Linear (e.g. attention.qkv)")
        if not (self.prior_weight >= 0 and math.isfinite(self.prior_weight)) or self.prior_batch < 0:
            raise ValueError(f"the prior weight must be a finite number >= 0 and the prior batch >= 0; got "
                             f"{self.prior_weight}, {self.prior_batch}")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def prior_images_per_batch(self) -> int:
        return self.prior_batch or self.batch_size


# ---- the adapters ------------------------------------------------------------------------------

def attach_lora(model: nn.Module, config: LoraTrainingConfig) -> list[nn.Parameter]:
    """Add trainable LoRA adapters (fp32, down random, up zero: ΔW = 0 at the start) to ``model`` in
    place with peft, seeded by ``config.seed`` without touching the global RNG; returns them."""
    from peft import LoraConfig, inject_adapter_in_model

    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.endswith(config.targets)]
    if not names:
        raise ValueError(f"no Linear of the model ends with any of {list(config.targets)}")
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, bias="none",
                             target_modules=names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER)
    model.seam.attach("peft_lora", tuple(names))   # listed on the seam; peft replaced these Linears in place
    params = [p for name, p in model.named_parameters() if ".lora_" in name]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def _lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return ((name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer))


def lora_pairs(model: nn.Module) -> dict[str, LowRankPair]:
    """{official module path: (down, up)} of the adapters ``attach_lora`` added."""
    return {name: LowRankPair(layer.lora_A[ADAPTER].weight.detach(), layer.lora_B[ADAPTER].weight.detach())
            for name, layer in _lora_layers(model)}


@torch.no_grad()
def set_lora_pairs(model: nn.Module, pairs: dict[str, LowRankPair]) -> None:
    """Load adapter values saved by ``lora_pairs`` (resuming)."""
    layers = dict(_lora_layers(model))
    if set(layers) != set(pairs):
        raise ValueError("the saved training state has adapters on other modules than this run's targets; "
                         "resume with the same --targets")
    for name, layer in layers.items():
        layer.lora_A[ADAPTER].weight.copy_(pairs[name].down)
        layer.lora_B[ADAPTER].weight.copy_(pairs[name].up)


# ---- training ----------------------------------------------------------------------------------

# Offset of the prior share's generator seeds, far from any step count the data's seeds reach.
PRIOR_STREAM = 1 << 40


class LoraTraining:
    """A LoRA being trained on ``model`` (a NextDiT, modified in place) with ``data`` and, for prior
    preservation, ``prior`` (the base model's images of other prompts; see the module docstring)."""

    prior = prior_order = None   # trainers built on this one (ControlNet) have no prior set

    def __init__(self, model: nn.Module, data: TrainingSet, config: LoraTrainingConfig, job: Distributed,
                 prior: TrainingSet | None = None):
        self.model, self.data, self.config, self.job, self.prior = model, data, config, job, prior
        self._start(attach_lora(model, config), model)
        self.prior_order = None if prior is None else BatchOrder(
            [item.bucket for item in prior.items], config.prior_images_per_batch * job.world_size,
            config.seed + PRIOR_STREAM)

    def _start(self, params: list, trained: nn.Module) -> None:
        """Everything a training run keeps besides what it trains: ``params`` are optimised, ``trained``
        (the module whose forward the loss runs) is wrapped for DDP."""
        model, config, job = self.model, self.config, self.job
        self.params = params
        model.gradient_checkpointing = config.checkpointing
        model.train()
        self.wrapped = job.wrap(trained)
        self.order = BatchOrder([item.bucket for item in self.data.items], config.batch_size * job.world_size,
                                config.seed)
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        bf16 = model.device.type == "cuda" and getattr(model, "compute_dtype", torch.float32) == torch.bfloat16
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup:
            return (step + 1) / c.warmup
        if c.schedule == "cosine":
            progress = (step - c.warmup) / max(1, c.steps - c.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _micro_batch(self, number: int) -> Tensor:
        """Forward of micro-batch ``number``; returns this process's mean loss (with a prior set:
        the data's mean + prior_weight × the prior's mean)."""
        loss = self._share_loss(number)
        if self.prior is not None:
            loss = loss + self.config.prior_weight * self._share_loss(number, prior=True)
        return loss

    def _share_loss(self, number: int, prior: bool = False) -> Tensor:
        mine, data, noise, t, text = self._inputs(number, prior)
        with self.autocast():
            prediction = self._predict(mine, noised(data, noise, t), t, text)
        return velocity_loss(prediction, data, noise).mean()

    def _predict(self, items, x: Tensor, t: Tensor, text) -> Tensor:
        """The trained model's velocity for the noised latents ``x`` of dataset ``items``."""
        return self.wrapped(x, t, text.feats, text.mask, text.pooled)

    def _inputs(self, number: int, prior: bool = False):
        """This process's rows of micro-batch ``number`` of the data (or of the prior set): dataset
        indices, latents, noise, times and the packed captions (dropped ones blank), all drawn from
        the batch's own seed."""
        c, params = self.config, self.model.params
        dataset, order = (self.prior, self.prior_order) if prior else (self.data, self.order)
        indices = order.batch(number)
        width, height = dataset.items[indices[0]].bucket
        size = len(indices)
        generator = torch.Generator().manual_seed(c.seed * 1_000_003 + number + (PRIOR_STREAM if prior else 0))
        t = logit_normal_times(size, c.time_shift, generator)
        dropped = (torch.rand(size, generator=generator) < c.caption_dropout).tolist()
        noise = torch.randn((size, params.in_channels, height // 8, width // 8), generator=generator)

        rows, device = self.job.rows(size), self.model.device
        mine = indices[rows]
        data = dataset.latents(mine).to(device)
        noise, t = noise[rows].to(device), t[rows].to(device)
        prompts = [prompt_batches(conditioning, 1, params.cap_dim, params.clip_dim)[0]
                   for conditioning in dataset.conditionings(mine, dropped[rows])]
        return mine, data, noise, t, pack(prompts).to(device)

    def train_step(self) -> float:
        """One optimizer step; returns the loss averaged over its micro-batches and all processes."""
        c = self.config
        total = torch.zeros((), device=self.model.device)
        for micro in range(c.accumulation):
            last = micro == c.accumulation - 1
            with contextlib.nullcontext() if last else self.job.no_sync(self.wrapped):
                loss = self._micro_batch(self.step * c.accumulation + micro)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the training loss became {loss.item()} at step {self.step + 1}; "
                                             f"lower --lr or train in fp32")
                (loss / c.accumulation).backward()
            total += loss.detach() / c.accumulation
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(self.job.mean(total))

    def pairs(self) -> dict[str, LowRankPair]:
        return lora_pairs(self.model)

    def state_dict(self) -> dict:
        return {"step": self.step, "config": asdict(self.config), "prior_images": self._prior_images(),
                "lora": {name: (pair.down.cpu(), pair.up.cpu()) for name, pair in self.pairs().items()},
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def _prior_images(self) -> int:
        return 0 if self.prior is None else len(self.prior.items)

    def load_state_dict(self, state: dict) -> None:
        if state.get("prior_images", 0) != self._prior_images():
            raise ValueError(f"the training state was saved with {state.get('prior_images', 0)} prior images and "
                             f"this run has {self._prior_images()}; resume with the same prior options")
        free = ("steps", "checkpointing")   # may change on resume: neither changes what a step computes
        # States saved before prior images existed lack their fields: they trained without any.
        defaults = {"prior_weight": 1.0, "prior_batch": 0}
        saved = {k: v for k, v in {**defaults, **state["config"]}.items() if k not in free}
        ours = {k: v for k, v in asdict(self.config).items() if k not in free}
        ours["targets"] = list(ours["targets"])
        saved["targets"] = list(saved["targets"])
        if saved != ours:
            changed = sorted(k for k in ours if saved.get(k) != ours[k])
            raise ValueError(f"the training state was saved with other settings ({', '.join(changed)}); resume "
                             f"with the settings it was started with (only --steps and checkpointing may change)")
        set_lora_pairs(self.model, {name: LowRankPair(*pair) for name, pair in state["lora"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])


def save_training_state(training, path: str | Path) -> Path:
    """A training's ``state_dict()`` (trained weights, optimizer, schedule, step), written atomically,
    for ``--resume``; every trainer of the pack saves its state through this."""
    path = Path(path)
    with atomic_path(path) as partial:
        torch.save(training.state_dict(), partial)
    return path


def run(training: LoraTraining, progress: bool = True, every: int = 0, on_every=None) -> None:
    """Train until ``config.steps``; after every ``every`` steps (and the last) call ``on_every(step)``
    on the first process. A bar shows the loss and the images per second (all processes)."""
    from tqdm import tqdm

    c, job = training.config, training.job
    images_per_step = c.batch_size * c.accumulation * job.world_size
    bar = tqdm(total=c.steps, initial=training.step, desc=getattr(training, "name", "train-lora"), unit="step",
               disable=not (progress and job.is_main))
    while training.step < c.steps:
        start = time.perf_counter()
        loss = training.train_step()
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_step / (time.perf_counter() - start):.2f}",
                        refresh=False)
        bar.update(1)
        done = training.step
        if on_every is not None and job.is_main and (done == c.steps or (every and done % every == 0)):
            on_every(done)
    bar.close()


# Passes over the data above which a LoRA starts to copy its images. On the embedded model
# the README recipe's 2500 steps of 32 over 3000 images (27 passes) kept the old prompts within 2.5
# points, while 200 steps of 32 over 30 images (213 passes) took every image's all-right from 95 to 0 %,
# and 300 steps of 8 over 30 (80 passes) took the old prompts' all-right from 98 to 46 %.
MANY_EPOCHS = 40


def overfitting_warning(images: int, steps: int, global_batch: int, prior: bool = False) -> str | None:
    """A warning when the planned steps go over a small dataset so many times that the LoRA is
    likely to learn its images rather than their concept (and to forget what the model knew);
    ``prior``: the run trains on prior images too, which guard the second but not the first."""
    epochs = steps * global_batch / max(images, 1)
    if epochs <= MANY_EPOCHS:
        return None
    fewer = max(1, MANY_EPOCHS * images // global_batch)
    if prior:
        return (f"{steps} steps of {global_batch} images go over the {images} images {epochs:.0f} times: the prior "
                f"images guard what the model already draws, but the LoRA may still copy these images rather than "
                f"learn their concept; check it on prompts it did not train on")
    return (f"{steps} steps of {global_batch} images go over the {images} images {epochs:.0f} times: the LoRA "
            f"will likely copy them and spoil what the model already draws; use fewer steps (at most about "
            f"{fewer}), a lower --lr, more images, or prior images of what the model should keep drawing "
            f"(--prior-prompts FILE --prior-images N, or --prior-data DIR), and check the old prompts")
