"""Many processes, one training job: the ``torch.distributed`` side shared by the trainers.

A trainer runs unchanged in one process or under ``torchrun`` (any number of processes and
nodes). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; ``start`` reads them, joins the process group (``nccl`` on GPUs, each process on
GPU ``LOCAL_RANK``; ``gloo`` on the CPU) and returns a ``Distributed`` the trainer asks:

- ``wrap(module)``: the trainable module in ``DistributedDataParallel``, which averages the
  gradients of the parameters that train (frozen base weights are neither broadcast nor reduced:
  every process loaded them from the same file);
- ``rows(global_batch)``: this process's share of a global batch (contiguous rows). The trainers
  draw all randomness for the whole global batch from one generator on every process and keep
  their rows, so N processes with batch B compute exactly what one process with batch N·B does;
- ``is_main``: only the first process writes files, prints progress and logs at INFO.

Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every call is a no-op on one process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, global_batch: int) -> slice:
        """This process's rows of a global batch of ``global_batch`` = world_size · per-process batch."""
        if global_batch % self.world_size:
            raise ValueError(f"global batch {global_batch} does not split over {self.world_size} processes")
        share = global_batch // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel over its trainable parameters (itself on one process)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
        frozen += [name for name, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def no_sync(self, wrapped: nn.Module):
        """Skip the gradient all-reduce (all but the last micro-batch of an accumulated step)."""
        return wrapped.no_sync() if self.active else contextlib.nullcontext()

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over all processes (for reporting)."""
        value = value.detach()
        if not self.active:
            return value
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        return value / self.world_size

    def gather(self, value) -> list:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def start(device: str = "auto") -> Distributed:
    """Join the job torchrun started (or run alone). ``device``: auto (a GPU when there is one), cpu
    or cuda. On GPUs each process takes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no GPU")
    where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(where)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                    **({"device_id": where} if use_cuda else {}))
        if rank != 0:  # one voice: the other processes report only warnings and errors
            logging.getLogger().setLevel(logging.WARNING)
        log.info("process %d of %d on %s (%s)", rank, world, where, dist.get_backend())
    return Distributed(rank, world, local_rank, where)


def finish(job: Distributed) -> None:
    """Leave the process group (after the last collective call)."""
    if job.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
