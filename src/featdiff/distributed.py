"""Data-parallel runs under torchrun: `torchrun --nproc-per-node N -m featdiff run CONFIG`.

Every rank runs the whole run in lockstep, on the same data, with the same named random streams.
The work that is split is the training of the stages that train on images (stage 1, CE
fine-tuning) and of the feature denoiser: each step draws its randomness for the whole batch
(the permutation, the augmentation, the diffusion draws) exactly as one process would, then every
rank takes its share of the batch's rows (`shard`), and the gradients are averaged over the ranks,
each weighted by its share of the rows, before the optimizer's step, so every rank takes the step
one process would take on the whole batch (up to the order of float additions, and BatchNorm's
batch statistics, which each rank computes over its own rows; rank 0's running statistics are
broadcast after every step). Sampling splits the classes over the ranks (each rank its own named
stream) and gathers the pseudo-features. Everything else (evaluation, the classifier, statistics)
is computed by every rank alike. Only rank 0 writes the run folder; every rank reads it, so
`--resume` works under torchrun too. gloo on the CPU, NCCL on CUDA (one GPU per rank, LOCAL_RANK).
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place among the ranks torchrun started (one rank alone otherwise)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def start(device: torch.device) -> World:
    """Join the process group torchrun set up (gloo on the CPU, NCCL on CUDA), once."""
    here = world()
    if here.parallel and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return here


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


_share: contextvars.ContextVar[float | None] = contextvars.ContextVar("featdiff_shard_share", default=None)


def shard(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous share of each tensor's rows (all tensors cut alike); one process
    keeps every row. Records the share for `average_gradients`."""
    here = world()
    if not here.parallel:
        return tensors
    rows = len(tensors[0])
    bounds = [rows * r // here.size for r in range(here.size + 1)]
    _share.set((bounds[here.rank + 1] - bounds[here.rank]) / rows if rows else 0.0)
    return tuple(t[bounds[here.rank] : bounds[here.rank + 1]] for t in tensors)


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """After a sharded backward: every rank's gradients replaced by Σ_r share_r · g_r, the gradient
    of the whole batch's mean loss (a no-op when the step was not sharded)."""
    share = _share.get()
    if share is None or not dist.is_initialized():
        return
    scale = share * world().size
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        parameter.grad.mul_(scale)
        dist.all_reduce(parameter.grad)
        parameter.grad.div_(world().size)
    _share.set(None)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, as DDP keeps them."""
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def gather_objects(value: object) -> list[object]:
    """Every rank's `value`, in rank order (just [value] alone)."""
    if not dist.is_initialized():
        return [value]
    gathered: list[object] = [None] * world().size
    dist.all_gather_object(gathered, value)
    return gathered


def from_main(compute):
    """`compute()` on rank 0, its value (or its UserError, raised again) on every rank: what only
    rank 0 may do (create the run folder), which every rank must agree on."""
    from featdiff.errors import UserError

    if not dist.is_initialized():
        return compute()
    outcome: list[object] = [None]
    if world().main:
        try:
            outcome[0] = ("value", compute())
        except UserError as error:
            outcome[0] = ("error", str(error))
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise UserError(value)
    return value


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
