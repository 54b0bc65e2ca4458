"""Step distillation: a student that samples in N Euler steps what its teacher samples in many.

After Meng et al., "On Distillation of Guided Diffusion Models" (CVPR 2023, arXiv 2210.03142),
stage 2: the guidance-distilled student of stage 1 (``training/distill.py``; it gives the
teacher's CFG velocity in one forward) is distilled to few steps. The student keeps the guidance
embedder; it is trained at one guidance scale (recorded in its file) or over a range.

Both methods here train the same thing. For a state x at data-time t_i of the student's N-step
grid (NewBie's shifted grid, ``time_grid(N, shift)``), a teacher runs K Euler steps on the
nested finer grid ``time_grid(N·K, shift)`` from t_i to t_{i+1}, landing at x'; the student learns
the one velocity that lands there, v* = (x' − x) / (t_{i+1} − t_i) (mean squared error):

- ``progressive`` (Meng et al. stage 2, the progressive distillation of Salimans & Ho,
  arXiv 2202.00512): rounds with K = 2, each training a student to take in one step what its
  teacher takes in two, halving the step count from ``start_steps`` down to N; each round's
  teacher is the previous round's student and starts the next student;
- ``segment``: one round with K = teacher_steps / N: each step is fitted directly to the
  teacher's multi-step solution over that step's interval (the knowledge distillation of Luhman &
  Luhman, arXiv 2101.02388, which maps noise onto the teacher's ODE solution in one step, applied
  per step of an N-step grid). No error of an intermediate student is passed on, at K teacher
  evaluations per training state.

The first round's teacher is the starting model itself (its own paths, as Meng et al. publish
it), or, given ``cfg_teacher``, the original teacher guided by CFG at each state's scale (two
branches per evaluation): the student still starts from the guidance-distilled model, but learns
the guided solution itself rather than stage 1's approximation of it, whose errors would
otherwise be the best it could reach.

Training states are data-free, as in ``distill.py``: a pool of trajectories on the student's
N-step grid, one prompt, guidance scale and noise each, advanced one step per iteration. With
``student_trajectories`` (the default) they advance with the student's own step (on-policy: it
trains where its sampling goes, drift included); otherwise with the teacher's.

How the methods and targets compare on the embedded model: the README's Few-step students.

Many processes (``torchrun``, ``training/distributed.py``) as in ``distill.py``: ``batch_size``
is per process, every process draws the whole job's states and keeps its rows, and the trainable
parameters are wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor, nn

from ..dit.model import NextDiT
from ..sampler_settings import DEFAULT_SHIFT, SamplerSettings
from ..sampling.schedule import time_grid
from ..text.conditioning import PromptBatch
from .distill import (Adapters, DistillConfig, Student, _Prompts, _TrajectoryPool, carries_module_hooks,
                      guided_velocity, train_step,
                      warmup_then_linear_decay)
from .distributed import Distributed

log = logging.getLogger(__name__)

METHODS = ("progressive", "segment")
SOLVER = "euler"   # the students take plain Euler steps: what they were trained to make


@dataclass(frozen=True)
class StepDistillConfig:
    steps: int = 4                       # the student's step count N
    method: str = "progressive"          # "progressive" or "segment"
    start_steps: int = 16                # progressive: the starting model's step count, steps·2^k
    teacher_steps: int = 32              # segment: the teacher's Euler steps over the whole grid, a multiple of steps
    mode: str = "lora"                   # "lora" or "full", as in distill.py
    rank: int = 16
    iterations: int = 400                # per round
    batch_size: int = 16
    lr: float = 1e-4
    guidance_min: float = 4.0            # guidance scales trained; equal: one fixed scale (recorded in the file)
    guidance_max: float = 4.0
    shift: float = DEFAULT_SHIFT
    width: int = 1024                    # image size of the trajectories
    height: int = 1024
    seed: int = 0
    checkpointing: bool = False
    student_trajectories: bool = True    # states advance with the student's step (else the teacher's)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.steps < 1 or self.iterations < 1 or self.batch_size < 1 or self.rank < 1:
            raise ValueError("steps, iterations, batch_size and rank must be at least 1")
        ratio = self.start_steps // self.steps
        if self.method == "progressive" and (self.start_steps % self.steps or ratio < 2 or ratio & (ratio - 1)):
            raise ValueError(f"progressive distillation halves the step count each round: start_steps "
                             f"({self.start_steps}) must be steps ({self.steps}) times 2, 4, 8, ...")
        if self.method == "segment" and (self.teacher_steps % self.steps or self.teacher_steps < 2 * self.steps):
            raise ValueError(f"teacher_steps ({self.teacher_steps}) must be a multiple of steps ({self.steps}), "
                             f"at least twice as many")
        # The rest (mode, guidance range, sizes) is checked where distill.py checks it.
        self.trajectories()

    @property
    def fixed_guidance(self) -> float | None:
        return self.guidance_min if self.guidance_min == self.guidance_max else None

    def rounds(self) -> list[tuple[int, int]]:
        """(student steps N, teacher steps per student step K) of each round, in order."""
        if self.method == "segment":
            return [(self.steps, self.teacher_steps // self.steps)]
        out, n = [], self.start_steps
        while n > self.steps:
            n //= 2
            out.append((n, 2))
        return out

    def trajectories(self) -> DistillConfig:
        """The settings the trajectory pool reads (a DistillConfig checks them)."""
        return DistillConfig(mode=self.mode, batch_size=self.batch_size, guidance_min=self.guidance_min,
                             guidance_max=self.guidance_max, shift=self.shift, width=self.width,
                             height=self.height, seed=self.seed)

    def own_settings(self) -> SamplerSettings:
        """What the student's file records: its steps, solver, shift and guidance scale (if fixed)."""
        return SamplerSettings(steps=self.steps, solver=SOLVER, shift=self.shift, cfg=1.0, guidance=self.fixed_guidance)


# ---- the student ---------------------------------------------------------------------------------

def _copy(model: nn.Module, clone: bool) -> NextDiT:
    """A new NextDiT module tree on ``model``'s tensors (``clone``: on copies of them)."""
    state = model.state_dict()
    if clone:
        state = {k: v.detach().clone() for k, v in state.items()}
    with torch.device("meta"):
        copy = NextDiT(model.params)
    copy.load_state_dict(state, assign=True)
    copy.compute_dtype = model.compute_dtype
    return copy


def make_step_student(model: nn.Module, mode: str = "lora", rank: int = 16, seed: int = 0) -> Student:
    """The student of a guidance-distilled ``model`` (left unchanged), with ``model`` as its teacher:
    in lora mode the base weights with the adapters off, in full mode ``model`` itself."""
    if not model.params.guidance_embed:
        raise ValueError("step distillation starts from a guidance-distilled student (with guidance_embedder.* "
                         "keys); distill the teacher first (`distill` without --steps), or give --steps with "
                         "the teacher and both stages run")
    if carries_module_hooks(model):
        raise ValueError("the model carries forward hooks (a LoRA applied by NextDiT LoRA Loader?); distill "
                         "from a file with the LoRA merged in")
    student = _copy(model, clone=mode == "full")
    student.train()
    if mode == "full":
        return Student(student.requires_grad_(True), None, model.eval())
    # lora: only the adapters train. The guidance embedder stays as stage 1 made it (shared with
    # the teacher): training it at a fixed scale shifts every modulation at once, and on a small
    # random model that made the error grow instead of shrink.
    student.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Student(student, Adapters(student, rank), None)


def _next_round(student: Student, rank: int, seed: int) -> Student:
    """The trained student becomes the next round's teacher and starting point. lora: its adapters
    are merged into new weight tensors (the earlier teacher's are never written) and fresh ones
    start at zero; full: a frozen copy becomes the teacher."""
    if student.adapters is None:
        return Student(student.model, None, _copy(student.model, clone=True).eval().requires_grad_(False))
    model = student.model
    for name, adapter in student.adapters.items():
        linear = model.get_submodule(name)
        merged = linear.weight.detach().float() + adapter.delta_weight().detach().float()
        linear.weight = nn.Parameter(merged.to(linear.weight.dtype), requires_grad=False)
    student.adapters.remove()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Student(model, Adapters(model, rank), None)


@torch.no_grad()
def teacher_velocity(student: Student, x: Tensor, t: Tensor, cond: PromptBatch, w: Tensor) -> Tensor:
    """The round's teacher: the student's starting point (adapters off, or the frozen copy), at scale w."""
    if student.adapters is None:
        return student.teacher(x, t, cond.feats, cond.mask, cond.pooled, w)
    with student.adapters.disabled():
        return student.model(x, t, cond.feats, cond.mask, cond.pooled, w)


def teacher_target(velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, times: Tensor) -> Tensor:
    """The velocity v* = (x' − x) / (t_K − t_0) of a teacher's Euler path over ``times`` (B, K+1);
    velocity(x, t) is the teacher's."""
    end = x
    for k in range(times.shape[1] - 1):
        end = end + (times[:, k + 1] - times[:, k]).view(-1, 1, 1, 1) * velocity(end, times[:, k])
    return (end - x) / (times[:, -1] - times[:, 0]).view(-1, 1, 1, 1)


# ---- training states -----------------------------------------------------------------------------

class _GridPool(_TrajectoryPool):
    """distill.py's trajectory pool with every trajectory on the student's own N-step grid."""

    def __init__(self, config: DistillConfig, steps: int, n_prompts: int, channels: int, device, generator,
                 job: Distributed):
        self.grid = time_grid(steps, config.shift)
        super().__init__(config, n_prompts, channels, device, generator, job)

    def _reset(self, slot: int) -> None:
        super()._reset(slot)
        self.grids[slot] = self.grid

    def fine_times(self, k: int) -> Tensor:
        """(B, K+1): each state's interval [t_i, t_{i+1}] on the K-times finer nested grid."""
        fine = time_grid(k * (len(self.grid) - 1), self.config.shift)
        rows = [fine[i * k:(i + 1) * k + 1] for i in self.step[self.rows]]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)


# ---- the loop ------------------------------------------------------------------------------------

def _train_round(student: Student, prompts: _Prompts, config: StepDistillConfig, steps: int, k: int,
                 round_seed: int, progress: bool, job: Distributed, cfg_teacher: nn.Module | None) -> None:
    """One round: ``steps`` student steps, each matching K Euler steps of the round's teacher (the
    student's starting point, or ``cfg_teacher`` guided by CFG at each state's scale)."""
    device = student.model.device
    generator = torch.Generator("cpu").manual_seed(round_seed)
    pool = _GridPool(replace(config.trajectories(), seed=round_seed), steps, len(prompts.items),
                     student.model.params.in_channels, device, generator, job)
    trained = job.wrap(student.trained_module())
    optimizer = torch.optim.AdamW(student.trainable(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(config.iterations))
    scale_weighted = config.fixed_guidance is None   # a range: every scale counts alike (distill.guided_loss)

    from tqdm import tqdm

    teacher_steps = steps * k
    bar = tqdm(range(config.iterations), desc=f"steps {teacher_steps}->{steps}", unit="it",
               disable=not (progress and job.is_main))
    for _ in bar:
        x, t, w, indices = pool.states()
        cond, both = prompts.batch(indices)
        if cfg_teacher is None:
            def velocity(x_, t_, cond=cond, w=w):
                return teacher_velocity(student, x_, t_, cond, w)
        else:
            def velocity(x_, t_, both=both, w=w):
                return guided_velocity(cfg_teacher, x_, t_, w, both)
        target = teacher_target(velocity, x, pool.fine_times(k))
        loss, prediction = train_step(student, trained, optimizer, x, t, cond, w, target, scale_weighted, pool.job_w)
        schedule.step()
        pool.advance(prediction if config.student_trajectories else target)
        bar.set_postfix(loss=f"{float(job.mean(loss)):.4g}", refresh=False)


def step_distill(model: nn.Module, positives: list, config: StepDistillConfig = StepDistillConfig(),
                 progress: bool = True, on_round: Callable[[Student, int], None] | None = None,
                 job: Distributed | None = None, cfg_teacher: nn.Module | None = None, negative=None) -> Student:
    """Train an N-step student (N = config.steps) of a guidance-distilled ``model`` (unchanged).

    positives: training prompts, each a CONDITIONING. With ``cfg_teacher`` (the teacher ``model``
    was distilled from, no guidance embedder) and ``negative`` (its unconditional CONDITIONING), the
    first round's targets are that teacher's CFG paths at each state's guidance scale instead of
    ``model``'s own: the student starts from ``model`` but learns the teacher's guided solution,
    not the guidance-distilled approximation of it. on_round(student, steps): called after each
    round but the last (progressive), e.g. to save that round's student. Returns the Student;
    ``distill.save_student`` writes it, with ``config.own_settings().to_metadata()``. job: this
    process's place in a torchrun job (default: alone).
    """
    if (cfg_teacher is None) != (negative is None):
        raise ValueError("CFG targets need both the teacher and its negative (unconditional) prompt")
    if cfg_teacher is not None and cfg_teacher.params.guidance_embed:
        raise ValueError("the CFG teacher is the model without guidance embedder that the guidance-distilled "
                         "student was made from")
    params = model.params
    job = job or Distributed(0, 1, 0, model.device)
    prompts = _Prompts(positives, negative, params, model.device)
    student = make_step_student(model, config.mode, config.rank, config.seed)
    rounds = config.rounds()
    for number, (steps, k) in enumerate(rounds):
        if number:
            student = _next_round(student, config.rank, config.seed + number)
        student.model.gradient_checkpointing = config.checkpointing
        log.info("step distillation round %d of %d: %d steps from the %s's %d", number + 1, len(rounds), steps,
                 "CFG teacher" if cfg_teacher is not None and number == 0 else "teacher", steps * k)
        _train_round(student, prompts, config, steps, k, config.seed + 1000 * number, progress, job,
                     cfg_teacher if number == 0 else None)
        if on_round is not None and number < len(rounds) - 1:
            on_round(student, steps)
    student.model.eval()
    return student
