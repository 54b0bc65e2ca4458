"""Compact students: a Next-DiT with K of its parent's joint layers, distilled from the parent.

After BK-SDM (Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion",
arXiv 2305.15798) and SDXS (Song et al., arXiv 2403.16627): blocks are removed from the parent,
the student starts from the parent's weights with the kept joint layers renumbered 0..K-1, and
learns

    loss = MSE(student velocity, parent velocity)
           + feature_weight · mean over kept layers i of MSE(student layer i's output,
                                                               parent layer keep[i]'s output)

at the same inputs (x, t, prompt). Both squared errors are taken per sample (a sample's joint
sequence is its caption tokens and its image tokens; caption lengths differ) and averaged over
the samples, so N processes with batch B train exactly as one with batch N·B. The features are
read at the forward's ``layer_output`` seam point: the model is not edited.

The parent is a teacher (no guidance embedder; the student is then used with CFG like it: every
training state is evaluated for the prompt and the negative prompt, one packed forward, and both
velocities are matched) or a guidance-distilled or few-step student (the student keeps the
guidance embedder and is trained at the parent's recorded guidance scale, or over the range).
Training states as in ``distill.py``: data-free trajectories of the parent itself (its CFG
velocity for a teacher), advanced one Euler step per iteration with the parent's velocity; a
parent whose file records its own sampler settings and that has a guidance embedder (a few-step
student) has them on its own step grid, as in ``step_distill.py``. The student's file carries the
parent's recorded settings, so a compact few-step student samples as its parent does.

Which layers: ``keep`` explicit, or ``evenly_spaced`` (first and last kept), or
``importance_ranked``: each layer's importance is the relative change of the parent's output when
that one layer is skipped (its input passed on as its output), measured at the parent's own
training states (a few prompts, all along the trajectories); the K most important are kept. How
the two rules and feature weight 0 (output distillation alone) compare on the embedded model:
the README's "Compact students" (there the measured importance kept layers 1, 3, 5 of 6 and beat
evenly spaced 0, 3, 5 by 10 points on shape; feature weight 1 beat 0 by 1.4 on shape and 3 on
images all right).

``mode`` full trains every weight of the student (the natural choice: the layers around a gap
must change); lora trains adapters on the kept layers' attention and MLP only (merged when
saved). ``save_state``/``load_state`` hold everything a run needs to continue exactly (weights
or adapters, optimizer, schedule, the trajectory pool and its generator).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..dit.model import NextDiT
from ..dit.own_settings import own_settings, preview_factors, preview_metadata
from ..sampler_settings import DEFAULT_SHIFT, SamplerSettings
from .distill import (Adapters, DistillConfig, Student, _Prompts, _TrajectoryPool, carries_module_hooks, save_student,
                      warmup_then_linear_decay)
from .distributed import Distributed
from .step_distill import _GridPool

log = logging.getLogger(__name__)

RULES = ("importance", "even")
_FEATURES = "compact_features"   # the feature recorder's name on a model's seam


@dataclass(frozen=True)
class CompactConfig:
    keep: tuple[int, ...]                 # the parent's joint layers the student keeps, in order
    mode: str = "full"                    # "full" or "lora"
    rank: int = 16                        # LoRA rank (lora mode)
    iterations: int = 1000
    batch_size: int = 4                   # training states per iteration and process
    lr: float = 1e-4
    feature_weight: float = 1.0           # 0: output distillation alone
    guidance_min: float = 1.0             # scales of the trajectories (a parent's recorded scale wins)
    guidance_max: float = 8.0
    shift: float = DEFAULT_SHIFT
    trajectory_steps: int = 16            # typical Euler steps of a parent trajectory (K/2..2K)
    width: int = 1024
    height: int = 1024
    seed: int = 0
    checkpointing: bool = False

    def __post_init__(self):
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode must be 'lora' or 'full'; got {self.mode!r}")
        if self.feature_weight < 0:
            raise ValueError(f"feature weight must be at least 0; got {self.feature_weight}")
        if self.iterations < 1 or self.batch_size < 1 or self.rank < 1:
            raise ValueError("iterations, batch size and rank must be at least 1")
        if not self.keep:
            raise ValueError("keep at least one joint layer")
        # The rest (guidance range, sizes) is checked where distill.py checks it.
        self.trajectories()

    def trajectories(self) -> DistillConfig:
        return DistillConfig(batch_size=self.batch_size, guidance_min=self.guidance_min,
                             guidance_max=self.guidance_max, shift=self.shift, trajectory_steps=self.trajectory_steps,
                             width=self.width, height=self.height, seed=self.seed)


# ---- which layers ------------------------------------------------------------------------------

def checked_keep(keep, n_layers: int) -> tuple[int, ...]:
    """``keep`` as a sorted tuple, or ValueError saying what is wrong with it."""
    keep = [int(i) for i in keep]
    if not keep:
        raise ValueError("keep at least one joint layer")
    wrong = [i for i in keep if not 0 <= i < n_layers]
    if wrong:
        raise ValueError(f"layer(s) {wrong} out of range: the parent has joint layers 0..{n_layers - 1}")
    doubled = sorted({i for i in keep if keep.count(i) > 1})
    if doubled:
        raise ValueError(f"layer(s) {doubled} given more than once; each kept layer is copied once")
    return tuple(sorted(keep))


def checked_count(k: int, n_layers: int) -> int:
    if not 1 <= k <= n_layers:
        raise ValueError(f"the student's layer count must be 1..{n_layers} (the parent's joint layers); got {k}")
    return k


def evenly_spaced(n_layers: int, k: int) -> tuple[int, ...]:
    """K layers spread evenly over 0..n-1, the first and the last always among them."""
    checked_count(k, n_layers)
    if k == 1:
        return (n_layers - 1,)
    return tuple(sorted({(i * (n_layers - 1) + (k - 1) // 2) // (k - 1) for i in range(k)}))


def most_important(importance: list[float], k: int) -> tuple[int, ...]:
    """The K layers whose removal changes the output most (ties: the earlier layer)."""
    checked_count(k, len(importance))
    ranked = sorted(range(len(importance)), key=lambda i: (-importance[i], i))
    return tuple(sorted(ranked[:k]))


class _SkipLayer:
    """Seam entry: joint layer ``index`` passes its input on unchanged."""

    def __init__(self, index: int):
        self.index, self.saved = index, None

    def layer_input(self, index: int, joint: Tensor, ctx) -> Tensor:
        if index == self.index:
            self.saved = joint
        return joint

    def layer_output(self, index: int, joint: Tensor, ctx) -> Tensor:
        return self.saved if index == self.index else joint


@torch.no_grad()
def layer_importance(parent: nn.Module, positives: list, negative, config: CompactConfig,
                     iterations: int = 16) -> list[float]:
    """Each joint layer's importance: ‖v_without it − v‖² / ‖v‖² summed over the parent's own
    training states of ``iterations`` iterations (the states the student will train on)."""
    n = len(parent.layers)
    changes, total = [0.0] * n, 0.0
    source = _Source(parent, positives, negative, config, Distributed(0, 1, 0, parent.device))
    for _ in range(iterations):
        inputs = source.inputs()
        v = source.parent_forward(inputs)
        total += float(v.float().pow(2).sum())
        for index in range(n):
            parent.seam.attach("skip_layer", _SkipLayer(index))
            try:
                skipped = source.parent_forward(inputs)
            finally:
                parent.seam.detach("skip_layer")
            changes[index] += float((skipped.float() - v.float()).pow(2).sum())
        source.advance(v, inputs)
    return [c / total for c in changes]


# ---- the student -------------------------------------------------------------------------------

def make_compact(parent: nn.Module, keep, clone: bool = True) -> NextDiT:
    """A Next-DiT with the parent's joint layers ``keep`` renumbered 0..K-1 and every other weight
    (embedders, refiners, final layer, a guidance embedder) the parent's; ``clone``: on copies."""
    keep = checked_keep(keep, parent.params.n_layers)
    renamed = {f"layers.{old}.": f"layers.{new}." for new, old in enumerate(keep)}
    state = {}
    for key, tensor in parent.state_dict().items():
        if key.startswith("layers."):
            prefix = ".".join(key.split(".")[:2]) + "."
            if prefix not in renamed:
                continue
            key = renamed[prefix] + key[len(prefix):]
        state[key] = tensor.detach().clone() if clone else tensor
    with torch.device("meta"):
        student = NextDiT(replace(parent.params, n_layers=len(keep)))
    student.load_state_dict(state, assign=True)
    student.compute_dtype = parent.compute_dtype
    return student


class _Recorder:
    """Seam entry keeping the outputs of the wanted joint layers of the last forward, in order."""

    def __init__(self, wanted):
        self.wanted = {index: slot for slot, index in enumerate(wanted)}
        self.outputs: list[Tensor | None] = [None] * len(self.wanted)
        self.lengths: tuple[int, ...] = ()

    def layer_output(self, index: int, joint: Tensor, ctx) -> Tensor:
        slot = self.wanted.get(index)
        if slot is not None:
            self.outputs[slot] = joint
            self.lengths = ctx.layout.joint.lengths
        return joint


def feature_loss(student_features: list[Tensor], parent_features: list[Tensor], lengths) -> Tensor:
    """Mean over the layers of the mean over the samples of each sample's mean squared error over
    its tokens and channels; the features are packed joint sequences (T, dim), ``lengths`` the
    tokens of each sample."""
    losses = []
    for mine, theirs in zip(student_features, parent_features):
        per_token = (mine.float() - theirs.float()).pow(2).mean(dim=1)
        losses.append(torch.stack([chunk.mean() for chunk in per_token.split(list(lengths))]).mean())
    return torch.stack(losses).mean()


def output_loss(prediction: Tensor, target: Tensor) -> Tensor:
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1).mean()


class _StudentForward(nn.Module):
    """The student's forward under one module owning its trainable parameters (what
    DistributedDataParallel wraps); the adapters act through their hooks."""

    def __init__(self, model: nn.Module, adapters: Adapters | None):
        super().__init__()
        self.model, self.adapters = model, adapters

    def forward(self, *args) -> Tensor:
        return self.model(*args)


@dataclass
class Compact:
    """The student being trained, its adapters (lora mode) and the frozen parent."""
    model: NextDiT
    adapters: Adapters | None
    parent: nn.Module
    keep: tuple[int, ...]

    def trainable(self) -> list[nn.Parameter]:
        source = self.model if self.adapters is None else self.adapters
        return [p for p in source.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        source = self.model if self.adapters is None else self.adapters
        return {k: v.detach().cpu().clone() for k, v in source.state_dict().items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        (self.model if self.adapters is None else self.adapters).load_state_dict(state)

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Official keys, adapters merged, on the CPU (distill.Student's merge)."""
        return Student(self.model, self.adapters, None).state_dict(dtype)


def make_student(parent: nn.Module, keep, mode: str = "full", rank: int = 16, seed: int = 0) -> Compact:
    if carries_module_hooks(parent):
        raise ValueError("the parent carries forward hooks (a LoRA applied by NextDiT LoRA Loader?); their effect "
                         "is not in its weights, so distill from a file with the LoRA merged in")
    if any(not t.is_floating_point() or t.dtype == torch.float8_e4m3fn for t in parent.state_dict().values()):
        raise ValueError("a compact student needs the parent in bf16, fp16 or fp32, not fp8 or GGUF; load it with "
                         "another weight dtype")
    model = make_compact(parent, keep, clone=True)
    model.train()
    parent.eval().requires_grad_(False)
    if mode == "full":
        return Compact(model.requires_grad_(True), None, parent, tuple(keep))
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Compact(model, Adapters(model, rank), parent, tuple(keep))


# ---- training states ---------------------------------------------------------------------------

@dataclass
class _Inputs:
    x: Tensor            # (B, C, h, w) this process's states
    t: Tensor
    w: Tensor            # guidance scales
    cond: object         # PromptBatch of the prompts
    both: object         # PromptBatch of prompts + negatives (teacher parents), else None


class _Source:
    """The parent's trajectories: what each iteration trains on, and the parent's forward there.

    A teacher is evaluated on prompt and negative (2B rows, one packed forward); the pool advances
    with its CFG velocity at each state's scale. A guidance parent gets its scale and is evaluated
    on the prompts alone; one with recorded sampler settings (a few-step student) walks its own
    step grid at its recorded scale."""

    def __init__(self, parent: nn.Module, positives: list, negative, config: CompactConfig, job: Distributed,
                 generator: torch.Generator | None = None):
        self.parent, self.job = parent, job
        self.guided = bool(parent.params.guidance_embed)
        settings: SamplerSettings | None = own_settings(parent)
        trajectories = config.trajectories()
        if self.guided and settings is not None and settings.guidance is not None:
            trajectories = replace(trajectories, guidance_min=settings.guidance, guidance_max=settings.guidance)
        self.prompts = _Prompts(positives, None if self.guided else negative, parent.params, parent.device)
        if not self.guided and self.prompts.negatives is None:
            raise ValueError("a teacher parent needs the negative prompt: the student learns both CFG branches")
        self.generator = generator or torch.Generator("cpu").manual_seed(config.seed)
        channels, device, count = parent.params.in_channels, parent.device, len(self.prompts.items)
        if self.guided and settings is not None and settings.steps:
            trajectories = replace(trajectories, shift=settings.shift)
            self.pool = _GridPool(trajectories, settings.steps, count, channels, device, self.generator, job)
        else:
            self.pool = _TrajectoryPool(trajectories, count, channels, device, self.generator, job)

    def inputs(self) -> _Inputs:
        x, t, w, indices = self.pool.states()
        cond, both = self.prompts.batch(indices)
        return _Inputs(x, t, w, cond, both)

    def student_args(self, inputs: _Inputs) -> tuple:
        """The forward's arguments (for the student and the parent alike)."""
        if self.guided:
            c = inputs.cond
            return inputs.x, inputs.t, c.feats, c.mask, c.pooled, inputs.w
        b = inputs.both
        return torch.cat([inputs.x, inputs.x]), torch.cat([inputs.t, inputs.t]), b.feats, b.mask, b.pooled

    @torch.no_grad()
    def parent_forward(self, inputs: _Inputs) -> Tensor:
        return self.parent(*self.student_args(inputs))

    def advance(self, parent_output: Tensor, inputs: _Inputs) -> None:
        """One Euler step of every trajectory with the parent's (CFG) velocity."""
        if self.guided:
            velocity = parent_output
        else:
            b = inputs.x.shape[0]
            v_cond, v_uncond = parent_output[:b], parent_output[b:]
            velocity = v_uncond + inputs.w.view(-1, 1, 1, 1) * (v_cond - v_uncond)
        self.pool.advance(velocity)

    # resume: the pool's state, this process's rows gathered into the job's batch
    def state_dict(self) -> dict:
        pool = self.pool
        xs = self.job.gather(pool.x.detach().cpu())
        return {"x": torch.cat(xs), "grids": [list(g) for g in pool.grids], "step": list(pool.step),
                "prompt": list(pool.prompt), "w": pool.w.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        pool = self.pool
        if len(state["step"]) != len(pool.step):
            raise ValueError(f"the state holds {len(state['step'])} trajectories, this job {len(pool.step)} "
                             f"(batch size × processes must stay the same)")
        pool.x = state["x"][pool.rows].to(pool.x.device, pool.x.dtype)
        pool.grids = [list(g) for g in state["grids"]]
        pool.step, pool.prompt = list(state["step"]), list(state["prompt"])
        pool.w = state["w"].clone()
        self.generator.set_state(state["generator"])


# ---- the loop ----------------------------------------------------------------------------------

class CompactTraining:
    """One compact distillation run, step by step (so it can be saved and resumed exactly)."""

    def __init__(self, parent: nn.Module, positives: list, negative, config: CompactConfig,
                 job: Distributed | None = None):
        self.config, self.iteration = config, 0
        self.job = job or Distributed(0, 1, 0, parent.device)
        self.student = make_student(parent, config.keep, config.mode, config.rank, config.seed)
        self.student.model.gradient_checkpointing = config.checkpointing
        self.source = _Source(parent, positives, negative, config, self.job)
        self.mine = self.student.model.seam.attach(_FEATURES, _Recorder(range(len(config.keep))))
        self.theirs = parent.seam.attach(_FEATURES, _Recorder(config.keep), replace=True)
        self.trained = self.job.wrap(_StudentForward(self.student.model, self.student.adapters))
        self.optimizer = torch.optim.AdamW(self.student.trainable(), lr=config.lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_then_linear_decay(config.iterations))

    def losses(self, inputs: _Inputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(loss trained on, output loss, feature loss, the parent's output) at ``inputs``."""
        target = self.source.parent_forward(inputs)
        parent_features = [f.detach() for f in self.theirs.outputs]
        prediction = self.trained(*self.source.student_args(inputs))
        out = output_loss(prediction, target)
        features = feature_loss(self.mine.outputs, parent_features, self.mine.lengths)
        loss = out + self.config.feature_weight * features if self.config.feature_weight else out
        return loss, out, features, target

    def step(self) -> tuple[float, float]:
        """One optimizer step; returns (output loss, feature loss), averaged over the processes."""
        inputs = self.source.inputs()
        loss, out, features, target = self.losses(inputs)
        if not torch.isfinite(loss):
            raise FloatingPointError("compact distillation loss became NaN/inf; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.trainable(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.source.advance(target, inputs)
        self.iteration += 1
        self.mine.outputs = [None] * len(self.mine.outputs)    # free the graph's activations
        return float(self.job.mean(out.detach())), float(self.job.mean(features.detach()))

    def finish(self) -> Compact:
        """Detach the recorders; the student in eval mode."""
        self.student.model.seam.detach(_FEATURES)
        self.student.parent.seam.detach(_FEATURES)
        self.student.model.eval()
        return self.student

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "config": _comparable(self.config),
                "trainable": self.student.trainable_state(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        saved, now = state["config"], _comparable(self.config)
        changed = sorted(k for k in now if saved.get(k) != now[k])
        if changed:
            raise ValueError(f"the training state was saved with other settings ({', '.join(changed)}); resume "
                             f"with the same options, or start again without --resume")
        self.student.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.source.load_state_dict(state["source"])
        self.iteration = int(state["iteration"])


def _comparable(config: CompactConfig) -> dict:
    """The settings a resumed run must share (checkpointing changes nothing a step computes)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k != "checkpointing"}


def save_state(training: CompactTraining, path: str | Path) -> None:
    """Write the training state (every process must call it: the pool's rows are gathered; the
    first process writes)."""
    from ..files.atomic import atomic_path

    state = training.state_dict()
    if training.job.is_main:
        with atomic_path(Path(path)) as partial:
            torch.save(state, partial)


def load_state(training: CompactTraining, path: str | Path) -> None:
    training.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def compact_distill(parent: nn.Module, positives: list, negative, config: CompactConfig, progress: bool = True,
                    job: Distributed | None = None, state_path: str | Path | None = None, save_every: int = 0,
                    resume: bool = False, stop_after: int | None = None,
                    on_step: Callable[[int, float, float], None] | None = None) -> Compact:
    """Train a compact student of ``parent`` (unchanged); returns it (``save_compact`` writes it).

    positives: training prompts (CONDITIONINGs); negative: the unconditional CONDITIONING (needed
    for a teacher parent, unused for a guidance-distilled one). state_path with save_every N: the
    training state written every N iterations (and at the end); resume: continue from it.
    stop_after: end after that many iterations in all (a run cut short; the state is written)."""
    training = CompactTraining(parent, positives, negative, config, job)
    if resume:
        load_state(training, state_path)
        log.info("resumed at iteration %d of %d", training.iteration, config.iterations)
    from tqdm import tqdm

    last = config.iterations if stop_after is None else min(stop_after, config.iterations)
    bar = tqdm(total=config.iterations, initial=training.iteration, desc=f"compact {len(config.keep)} layers",
               unit="it", disable=not (progress and training.job.is_main))
    while training.iteration < last:
        out, features = training.step()
        bar.update(1)
        bar.set_postfix(output=f"{out:.4g}", features=f"{features:.4g}", refresh=False)
        if on_step is not None:
            on_step(training.iteration, out, features)
        if state_path is not None and save_every and (training.iteration % save_every == 0
                                                       or training.iteration == last):
            save_state(training, state_path)
    bar.close()
    return training.finish()


def default_output_path(parent_path: str | Path, k: int) -> Path:
    """``<parent stem>-<K>layers.safetensors`` next to the parent (so the loader lists it)."""
    path = Path(parent_path)
    stem = path.stem if path.is_file() or path.suffix else path.name
    return path.with_name(f"{stem}-{k}layers.safetensors")


def compact_metadata(parent: nn.Module, keep, config: CompactConfig, parent_name: str,
                     parent_fingerprint: str) -> dict[str, str]:
    """What the student's file records: its parent, the kept layers, how it was trained, and the
    parent's own sampler settings (so a compact few-step student samples as its parent)."""
    settings, preview = own_settings(parent), preview_factors(parent)
    return {**(preview_metadata(*preview) if preview is not None else {}),
            "nextdit_distilled": "compact", "parent": parent_name, "parent_fingerprint": parent_fingerprint,
            "parent_layers": str(parent.params.n_layers), "kept_layers": ",".join(str(i) for i in keep),
            "distill_mode": config.mode, "feature_weight": f"{config.feature_weight:g}",
            "iterations": str(config.iterations), **(settings.to_metadata() if settings is not None else {})}


def save_compact(student: Compact, path: str | Path, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write the student as one safetensors file in the official layout (``n_layers`` = K)."""
    return save_student(student, path, dtype, {"nextdit_distilled": "compact", **(metadata or {})}, overwrite)
