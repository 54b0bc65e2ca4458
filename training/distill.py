"""Guidance distillation: a student that gives the teacher's CFG velocity in one forward.

After Meng et al., "On Distillation of Guided Diffusion Models" (CVPR 2023, arXiv 2210.03142),
stage 1, with a guidance input as FLUX.1-dev has one (black-forest-labs/flux `guidance_in`): the
student is the teacher plus a guidance embedder (``guidance_embedder.mlp.0/2``, last layer
zero-initialised, so the student starts as the teacher's conditional branch). For each training
sample a guidance scale w is drawn uniformly from a range and the student, given w, learns the
teacher's guided velocity v_u + w·(v_c − v_u) (MSE).

Modes: ``lora`` trains the guidance embedder plus low-rank adapters on every attention (qkv, out)
and MLP (w1, w2, w3) linear; the teacher IS the student with adapters off and no guidance, so the
base weights exist once. ``full`` trains every weight of a separate copy (needs ~4× the model's
size more memory for the copy and Adam's state).

Training states x_t: with ``latents`` (normalised training latents), x_t = t·latent + (1 − t)·noise
at t drawn on the shifted curve. Without them (data-free, the default), x_t are states of the
teacher's own guided ODE trajectories: a pool of ``batch_size`` trajectories, each with its prompt,
scale w and number of Euler steps; every iteration's teacher evaluation is both the training
target at the current states and the step that advances them, so targets cost nothing extra and
the states are exactly those the sampler visits. With ``student_trajectories`` the pool advances
with the student's own velocity instead (on-policy, as in DAgger): the teacher still gives every
target, but at the states the student's sampling reaches, drift included, so it learns to correct
its own errors rather than only to follow a path it never takes alone.

Many processes (``torchrun``, ``training/distributed.py``): ``batch_size`` is per process. The
states, scales and prompts of the whole job's batch are drawn on every process from the same
generator and each process keeps its rows, so N processes with batch B train exactly as one
process with batch N·B; the trainable parameters are wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..dit.layers import TimestepEmbedder
from ..dit.model import NextDiT
from ..dit.params import LORA_TARGETS
from ..files.atomic import atomic_path
from ..sampler_settings import DEFAULT_SHIFT
from ..sampling.schedule import shift_time, time_grid
from ..text.conditioning import PromptBatch, is_conditioning, pack, prompt_batches
from .distributed import Distributed
from .flow import noised

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    mode: str = "lora"                        # "lora" or "full"
    rank: int = 16                            # LoRA rank (lora mode)
    iterations: int = 2000
    batch_size: int = 4                       # latents per iteration and process (the teacher runs 2× that, packed)
    lr: float = 1e-4                          # adapters (lora) or all weights (full)
    optimizer: str = "adamw"                  # or "sgd" (plain gradient steps)
    embedder_lr: float = 1e-3                 # the new guidance embedder
    guidance_min: float = 1.0
    guidance_max: float = 8.0
    shift: float = DEFAULT_SHIFT              # time grid of the trajectories / the t distribution
    trajectory_steps: int = 16                # data-free: typical Euler steps of a teacher trajectory (K/2..2K)
    width: int = 1024                         # data-free: image size of the trajectories
    height: int = 1024
    seed: int = 0
    checkpointing: bool = False               # recompute block activations in backward (less memory)
    scale_weighted_loss: bool = False         # each sample's error / max(w, 1)² (see guided_loss)
    student_trajectories: bool = False        # data-free: states advance with the student's velocity

    def __post_init__(self):
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode must be 'lora' or 'full'; got {self.mode!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd'; got {self.optimizer!r}")
        if not 0 <= self.guidance_min <= self.guidance_max:
            raise ValueError(f"guidance range must satisfy 0 <= min <= max; got "
                             f"[{self.guidance_min}, {self.guidance_max}]")
        if self.rank < 1 or self.iterations < 1 or self.batch_size < 1 or self.trajectory_steps < 1:
            raise ValueError("rank, iterations, batch_size and trajectory_steps must be at least 1")
        if self.width % 16 or self.height % 16:
            raise ValueError(f"width/height must be multiples of 16; got {self.width}x{self.height}")


# ---- LoRA adapters on forward hooks (the module tree and its state-dict keys stay official) ----

_ENTRY = "training_adapters"   # the adapters' name on the model's seam


def carries_module_hooks(model: nn.Module) -> bool:
    """Whether something attached to ``model`` acts through module hooks (a LoRA applied by NextDiT
    LoRA Loader, say), whose effect is not in the weights."""
    return any(hooks for _, _, hooks in model.seam.entries())


class _Adapter(nn.Module):
    """ΔW·x = B(A(x)); A (rank, in) small random, B (out, rank) zero, so training starts at ΔW = 0."""

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        device = linear.weight.device
        self.down = nn.Parameter(torch.randn(rank, linear.in_features, device=device) / math.sqrt(linear.in_features))
        self.up = nn.Parameter(torch.zeros(linear.out_features, rank, device=device))
        self.enabled = True

    def hook(self, module: nn.Linear, args: tuple, output: Tensor) -> Tensor:
        if not self.enabled:
            return output
        x = args[0]
        delta = (x.to(self.down.dtype) @ self.down.T) @ self.up.T
        return output + delta.to(output.dtype)

    def delta_weight(self) -> Tensor:
        return self.up @ self.down


class Adapters(nn.Module):
    """The LoRA adapters of one model, keyed by the official name of the linear they patch."""

    def __init__(self, model: nn.Module, rank: int):
        super().__init__()
        self.by_name = nn.ModuleDict()
        self._seam = model.seam
        model.seam.attach(_ENTRY, self)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.endswith(LORA_TARGETS):
                adapter = _Adapter(module, rank)
                self.by_name[name.replace(".", "__")] = adapter
                model.seam.hook(_ENTRY, module, post=adapter.hook)

    def items(self):
        return ((key.replace("__", "."), adapter) for key, adapter in self.by_name.items())

    @contextlib.contextmanager
    def disabled(self):
        """Run the base (teacher) weights."""
        for adapter in self.by_name.values():
            adapter.enabled = False
        try:
            yield
        finally:
            for adapter in self.by_name.values():
                adapter.enabled = True

    def remove(self) -> None:
        self._seam.detach(_ENTRY)


# ---- the student ---------------------------------------------------------------------------

@dataclass
class Student:
    """The model being trained (guidance embedder on), its adapters (lora mode) and its teacher."""
    model: nn.Module
    adapters: Adapters | None
    teacher: nn.Module | None           # full mode: the frozen teacher; lora mode: None (= model, adapters off)

    @torch.no_grad()
    def teacher_velocity(self, x, t, feats, mask, pooled) -> Tensor:
        if self.adapters is None:
            return self.teacher(x, t, feats, mask, pooled)
        with self.adapters.disabled():
            return self.model(x, t, feats, mask, pooled)  # guidance None: the embedder is skipped

    def trainable(self) -> list[nn.Parameter]:
        """The parameters that train: the guidance embedder (where it trains) and the adapters
        (lora), or every weight of the student's own copy (full)."""
        if self.adapters is None:
            return [p for p in self.model.parameters() if p.requires_grad]
        return [p for p in (*self.model.guidance_embedder.parameters(), *self.adapters.parameters())
                if p.requires_grad]

    def param_groups(self, lr: float, embedder_lr: float) -> list[dict]:
        """The new guidance embedder learns fast from zero; the adapters / base weights gently."""
        embedder = list(self.model.guidance_embedder.parameters())
        ids = {id(p) for p in embedder}
        rest = [p for p in self.trainable() if id(p) not in ids]
        return [{"params": embedder, "lr": embedder_lr}, {"params": rest, "lr": lr}]

    def trained_module(self) -> nn.Module:
        """One module owning every trainable parameter whose forward is the student's (what
        DistributedDataParallel wraps)."""
        return _StudentForward(self.model, self.adapters)

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Official keys + ``guidance_embedder.*``, adapters merged (W + B·A) into new tensors, on the CPU.
        The teacher's tensors are never modified."""
        adapters = self.adapters.items() if self.adapters is not None else ()
        deltas = {f"{name}.weight": adapter.delta_weight() for name, adapter in adapters}
        out = {}
        for key, tensor in self.model.state_dict().items():
            tensor = tensor.detach()
            if key in deltas:
                tensor = (tensor.float() + deltas[key].detach().float()).to(tensor.dtype)
            out[key] = tensor.to("cpu", dtype or tensor.dtype).contiguous()
        return out


class _StudentForward(nn.Module):
    def __init__(self, model: nn.Module, adapters: Adapters | None):
        super().__init__()
        self.model, self.adapters = model, adapters

    def forward(self, *args) -> Tensor:
        return self.model(*args)   # the adapters act through their hooks


def make_student(teacher: nn.Module, mode: str = "lora", rank: int = 16, seed: int = 0) -> Student:
    """A student built from ``teacher`` (a NextDiT without guidance embedder), teacher unchanged."""
    params = teacher.params
    if params.guidance_embed:
        raise ValueError("the teacher already has a guidance embedder (it is a distilled student); "
                         "distill from the original weights")
    if carries_module_hooks(teacher):
        raise ValueError("the teacher carries forward hooks (a LoRA applied by NextDiT LoRA Loader?); their "
                         "effect is not in its weights, so distill from a file with the LoRA merged in")
    state = teacher.state_dict()
    if any(not t.is_floating_point() or t.dtype == torch.float8_e4m3fn for t in state.values()):
        raise ValueError("distillation needs the teacher in bf16, fp16 or fp32, not fp8; load it with "
                         "another weight dtype")
    device = teacher.device
    with torch.device("meta"):
        model = NextDiT(replace(params, guidance_embed=True))
    if mode == "full":
        state = {k: v.detach().clone() for k, v in state.items()}
    # Seeded initialisation (embedder's first layer, adapters' down projections) without touching
    # the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = _fresh_guidance_embedder(params, device, teacher.t_embedder.mlp[0].weight.dtype)
        model.load_state_dict({**state, **fresh}, assign=True)
        model.compute_dtype = teacher.compute_dtype
        model.train()
        if mode == "full":
            model.requires_grad_(True)
            return Student(model, None, teacher)
        model.requires_grad_(False)
        model.guidance_embedder.requires_grad_(True)
        return Student(model, Adapters(model, rank), None)


def _fresh_guidance_embedder(params, device, dtype) -> dict[str, Tensor]:
    """guidance_embedder.mlp.0 initialised like nn.Linear, mlp.2 zero (student starts as the teacher),
    in the dtype of the teacher's time embedder (the forward computes them alike)."""
    embedder = TimestepEmbedder(params.adaln_dim, params.t_embed_freq_dim).to(device)
    nn.init.zeros_(embedder.mlp[2].weight)
    nn.init.zeros_(embedder.mlp[2].bias)
    embedder = embedder.to(dtype)
    return {f"guidance_embedder.{k}": v for k, v in embedder.state_dict().items()}


# ---- training states -----------------------------------------------------------------------

class _Prompts:
    """Training prompts (each a PromptBatch of size 1) and their unconditional prompts: one shared
    negative CONDITIONING, or a list with one per positive (None: no unconditional prompts)."""

    def __init__(self, positives: list, negative, params, device):
        def batches(conditionings, what):
            out = []
            for index, conditioning in enumerate(conditionings):
                out += prompt_batches(conditioning, 1, params.cap_dim, params.clip_dim, f"{what} {index}")
            return out

        self.items = batches(positives, "prompt")
        if not self.items:
            raise ValueError("distillation needs at least one training prompt")
        if negative is None:
            self.negatives = None
        elif is_conditioning(negative):
            self.negatives = batches([negative], "negative") * len(self.items)
        else:
            self.negatives = batches(negative, "negative")
            if len(self.negatives) != len(self.items):
                raise ValueError(f"{len(self.negatives)} negatives for {len(self.items)} prompts; give one "
                                 f"negative for all or one per prompt")
        self.device = device

    def batch(self, indices: list[int]) -> tuple[PromptBatch, PromptBatch | None]:
        """(cond, cond + uncond) packed for len(indices) samples (cond + uncond None without negatives)."""
        cond = [self.items[i] for i in indices]
        if self.negatives is None:
            return pack(cond).to(self.device), None
        uncond = [self.negatives[i] for i in indices]
        return pack(cond).to(self.device), pack(cond + uncond).to(self.device)


@torch.no_grad()
def guided_velocity(teacher, x, t, w, both: PromptBatch) -> Tensor:
    """A teacher's plain CFG velocity with a per-sample scale w (B,): one packed forward of 2B.
    teacher(x, t, feats, mask, pooled) is the teacher's forward, without guidance input."""
    b = x.shape[0]
    v = teacher(torch.cat([x, x]), torch.cat([t, t]), both.feats, both.mask, both.pooled)
    v_cond, v_uncond = v[:b], v[b:]
    return v_uncond + w.view(-1, 1, 1, 1) * (v_cond - v_uncond)


class _TrajectoryPool:
    """Data-free states: the job's batch of teacher CFG trajectories, advanced one Euler step per
    iteration. Every process draws every trajectory's random start (so all draw alike) and keeps
    the states of its own rows."""

    def __init__(self, config: DistillConfig, n_prompts: int, channels: int, device, generator,
                 job: Distributed):
        self.config, self.n_prompts, self.device, self.gen = config, n_prompts, device, generator
        self.shape = (channels, config.height // 8, config.width // 8)
        size = config.batch_size * job.world_size
        self.rows = job.rows(size)
        self.x = torch.empty(config.batch_size, *self.shape)
        self.grids: list[list[float]] = [[]] * size
        self.step = [0] * size
        self.prompt = [0] * size
        self.w = torch.empty(size)
        for slot in range(size):
            self._reset(slot)
        self.x = self.x.to(device)

    def _reset(self, slot: int) -> None:
        c = self.config
        # Step counts from K/2 to 2K: trajectories desynchronise, and the states reach t close to 1.
        low, high = max(1, c.trajectory_steps // 2), 2 * c.trajectory_steps
        steps = int(torch.randint(low, high + 1, (1,), generator=self.gen))
        self.grids[slot] = time_grid(steps, c.shift)
        self.step[slot] = 0
        self.prompt[slot] = int(torch.randint(self.n_prompts, (1,), generator=self.gen))
        self.w[slot] = c.guidance_min + (c.guidance_max - c.guidance_min) * torch.rand((), generator=self.gen)
        start = torch.randn(self.shape, generator=self.gen)
        if self.rows.start <= slot < self.rows.stop:
            self.x[slot - self.rows.start] = start.to(self.x.device)

    def states(self) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        rows = self.rows
        t = torch.tensor([g[s] for g, s in zip(self.grids[rows], self.step[rows])], dtype=torch.float32,
                         device=self.device)
        self.job_w = self.w.clone()
        return self.x, t, self.w[rows].to(self.device), self.prompt[rows]

    def advance(self, velocity: Tensor) -> None:
        """Move this process's states by ``velocity``; every trajectory's clock advances."""
        rows = self.rows
        dt = torch.tensor([g[s + 1] - g[s] for g, s in zip(self.grids[rows], self.step[rows])], device=self.device)
        self.x = self.x + dt.view(-1, 1, 1, 1) * velocity
        for slot in range(len(self.step)):
            self.step[slot] += 1
            if self.step[slot] == len(self.grids[slot]) - 1:
                self._reset(slot)


class _LatentSource:
    """States from training latents: x_t = t·latent + (1 − t)·noise, t on the shifted curve; the
    job's whole batch drawn on every process, this process's rows kept."""

    def __init__(self, config: DistillConfig, latents: Tensor, n_prompts: int, device, generator,
                 job: Distributed):
        self.config, self.latents, self.n_prompts, self.device, self.gen = config, latents, n_prompts, device, generator
        self.size, self.rows = config.batch_size * job.world_size, job.rows(config.batch_size * job.world_size)

    def states(self):
        c, b, rows = self.config, self.size, self.rows
        pick = torch.randint(len(self.latents), (b,), generator=self.gen)
        data = self.latents[pick].float()
        noise = torch.randn(data.shape, generator=self.gen)
        t = torch.tensor([shift_time(float(u), c.shift) for u in torch.rand(b, generator=self.gen)])
        x = noised(data, noise, t)
        w = c.guidance_min + (c.guidance_max - c.guidance_min) * torch.rand(b, generator=self.gen)
        prompts = torch.randint(self.n_prompts, (b,), generator=self.gen).tolist()
        self.job_w = w
        return x[rows].to(self.device), t[rows].to(self.device), w[rows].to(self.device), prompts[rows]

    def advance(self, velocity: Tensor) -> None:
        pass


def _scale_weights(w: Tensor) -> Tensor:
    return w.float().clamp(min=1.0).pow(-2)


def guided_loss(prediction: Tensor, target: Tensor, w: Tensor, scale_weighted: bool,
                job_w: Tensor | None = None) -> Tensor:
    """Mean squared error against the guided targets. The target v_u + w·(v_c − v_u) grows with
    w, so under a plain MSE the largest scales' errors dominate and the low scales (w = 1 is the
    teacher's own conditional velocity) are fitted loosely. ``scale_weighted`` divides each
    sample's error by max(w, 1)², weights normalised to sum 1, so every scale counts alike.
    job_w: the scales of the whole job's batch under torchrun (this process's ``w`` among them):
    the weights are normalised over all of them, so the gradients DistributedDataParallel averages
    are those of the job's whole batch."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if not scale_weighted:
        return per_sample.mean()
    weights = _scale_weights(w)
    if job_w is None:
        return (per_sample * weights).sum() / weights.sum()
    processes = len(job_w) / len(w)
    return (per_sample * weights).sum() * processes / _scale_weights(job_w).sum().to(weights.device)


# ---- the loop --------------------------------------------------------------------------------

def warmup_then_linear_decay(iterations: int):
    """The learning-rate factor per iteration: a short warm-up, then linear decay to zero (the
    targets are noisy: random states, scales, prompts)."""
    warmup = max(1, iterations // 20)
    return lambda i: min((i + 1) / warmup, max(0.0, (iterations - i) / (iterations - warmup + 1)))


def train_step(student: Student, trained: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, t: Tensor,
               cond: PromptBatch, w: Tensor, target: Tensor, scale_weighted: bool,
               job_w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One optimizer step on one batch through ``trained`` (the student's forward, maybe wrapped in
    DistributedDataParallel); returns (loss, the student's velocity), detached."""
    prediction = trained(x, t, cond.feats, cond.mask, cond.pooled, w)
    loss = guided_loss(prediction, target, w, scale_weighted, job_w)
    if not torch.isfinite(loss):
        raise FloatingPointError("distillation loss became NaN/inf; lower --lr or train in fp32/bf16")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.trainable(), 1.0)
    optimizer.step()
    return loss.detach(), prediction.detach()


def distill(teacher: nn.Module, positives: list, negative, config: DistillConfig = DistillConfig(),
            latents: Tensor | None = None, progress: bool = True, job: Distributed | None = None) -> Student:
    """Train a guidance-distilled student of ``teacher``.

    positives: training prompts, each a CONDITIONING (e.g. NextDiT Text Encode's output); negative:
    the unconditional CONDITIONING (the official default is the empty prompt). latents: optional
    (N, 16, h, w) normalised training latents; without them the states come from teacher
    trajectories at config.width × config.height. job: this process's place in a torchrun job
    (default: alone). Returns the Student; ``save_student`` writes it.
    """
    if latents is not None and config.student_trajectories:
        raise ValueError("student_trajectories advances the data-free trajectories; with latents the states "
                         "are noised training latents. Use one or the other")
    params = teacher.params
    device = teacher.device
    job = job or Distributed(0, 1, 0, device)
    student = make_student(teacher, config.mode, config.rank, config.seed)
    student.model.gradient_checkpointing = config.checkpointing
    trained = job.wrap(student.trained_module())
    prompts = _Prompts(positives, negative, params, device)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    source = (_TrajectoryPool(config, len(prompts.items), params.in_channels, device, generator, job)
              if latents is None else _LatentSource(config, latents, len(prompts.items), device, generator, job))
    groups = student.param_groups(config.lr, config.embedder_lr)
    optimizer = (torch.optim.SGD(groups, lr=config.lr) if config.optimizer == "sgd"
                 else torch.optim.AdamW(groups, weight_decay=0.0))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(config.iterations))

    from tqdm import tqdm

    bar = tqdm(range(config.iterations), desc="distill", unit="it", disable=not (progress and job.is_main))
    for _ in bar:
        x, t, w, indices = source.states()
        cond, both = prompts.batch(indices)
        target = guided_velocity(student.teacher_velocity, x, t, w, both)
        loss, prediction = train_step(student, trained, optimizer, x, t, cond, w, target,
                                      config.scale_weighted_loss, source.job_w)
        schedule.step()
        source.advance(prediction if config.student_trajectories else target)
        bar.set_postfix(loss=f"{float(job.mean(loss)):.4g}", refresh=False)

    student.model.eval()
    return student


def default_output_path(teacher_path: str | Path) -> Path:
    """``<teacher stem>-distilled.safetensors`` next to the teacher (so the loader lists it)."""
    path = Path(teacher_path)
    stem = path.stem if path.is_file() or path.suffix else path.name
    return path.with_name(f"{stem}-distilled.safetensors")


def save_student(student: Student, path: str | Path, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write the merged student as one safetensors file in the official layout (+ guidance_embedder.*)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --output or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        save_file(student.state_dict(dtype), str(partial),
                  metadata={"nextdit_distilled": "guidance", **(metadata or {})})
    return path
