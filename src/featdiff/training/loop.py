"""The one training loop: run a `TrainState` to a step count, checkpointing as it goes.

Every trainer in featdiff (encoder, fine-tuning, classifier, denoiser, end-to-end) is this loop
with its own step function. A step function takes the state and the batch's row indices, computes
its loss with a pure loss function and applies it with `apply_update` (or, made private, with
clipped and noised per-example gradients): the loop never sees a loss, only the values to log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from torch import Tensor

from featdiff.distributed import average_gradients, broadcast_buffers, world
from featdiff.progress import progress
from featdiff.training.state import TrainState

StepFunction = Callable[[TrainState, Tensor], dict[str, Tensor | float]]
"""(state, batch row indices) -> values to log; tensors are summed on their device and read only
at log and epoch ends, so a CUDA step never waits for the host."""
EpochHook = Callable[[TrainState], None]


def apply_update(loss: Tensor, *optimizers: Any) -> None:
    """The plain update: clear the gradients, backpropagate `loss`, (under torchrun, after a
    sharded batch) average the gradients over the ranks, step every optimizer."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients([p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]])
    for optimizer in optimizers:
        optimizer.step()


def set_learning_rate(state: TrainState, lr: float) -> None:
    """Every parameter group's learning rate to `lr`, times the group's `lr_scale` if it has one."""
    for optimizer in state.optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)


def run_steps(
    state: TrainState,
    until: int,
    step: StepFunction,
    *,
    lr_at: Callable[[int], float] | None = None,
    on_epoch_start: EpochHook | None = None,
    on_epoch_end: Callable[[TrainState, dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every_steps: int | None = None,
    checkpoint_every_epochs: int | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 100,
    desc: str = "training",
) -> TrainState:
    """Run `state` until `state.step == until`.

    Per step: the next batch (an epoch's first batch calls `on_epoch_start` after its shuffle),
    the learning rate `lr_at(step)`, the step function, the EMA update. The logged values are
    summed per epoch and kept as a running average (`state.running`, reported to `log` every
    `log_every` steps); at an epoch's end their means, with the epoch number and its wall time,
    are appended to `state.history` and passed to `on_epoch_end`. `checkpoint` receives
    `state.state_dict()` every `checkpoint_every_steps` steps or at the end of every
    `checkpoint_every_epochs`-th epoch, never after the last step (the caller saves the result).
    """
    bar = progress(total=until, initial=state.step, desc=desc, unit="step", disable=not world().main)
    parallel = world().parallel
    epoch_started = time.perf_counter()
    while state.step < until:
        index = state.batches.next()
        if state.batches.epoch_started:
            epoch_started = time.perf_counter()
            if on_epoch_start is not None:
                on_epoch_start(state)
        if lr_at is not None:
            set_learning_rate(state, lr_at(state.step))
        logged = step(state, index)
        if parallel:
            broadcast_buffers(state.model)
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        state.step += 1
        state.epoch_steps += 1
        for name, value in logged.items():
            value = value.detach() if isinstance(value, Tensor) else value
            state.epoch_sums[name] = state.epoch_sums.get(name, 0.0) + value
            previous = state.running.get(name)
            state.running[name] = value if previous is None else 0.98 * previous + 0.02 * value
        bar.update(1)
        if state.step % log_every == 0:
            running = {name: float(value) for name, value in state.running.items()}
            bar.set_postfix({name: f"{value:.4f}" for name, value in running.items()}, refresh=False)
            if log is not None:
                log(state.step, running)
        finished_epoch = state.batches.epoch_finished
        if finished_epoch:
            means = {name: float(total) / state.epoch_steps for name, total in state.epoch_sums.items()}
            means |= {"epoch": state.batches.epoch + 1, "epoch_s": time.perf_counter() - epoch_started}
            state.history.append(means)
            state.epoch_sums, state.epoch_steps = {}, 0
            if on_epoch_end is not None:
                on_epoch_end(state, means)
        if checkpoint is not None and state.step < until and _due(state, finished_epoch, checkpoint_every_steps, checkpoint_every_epochs):
            checkpoint(state.state_dict())
    bar.close()
    return state


def _due(state: TrainState, finished_epoch: bool, every_steps: int | None, every_epochs: int | None) -> bool:
    if every_steps is not None and state.step % every_steps == 0:
        return True
    return every_epochs is not None and finished_epoch and (state.batches.epoch + 1) % every_epochs == 0


def cosine_lr(step: int, total: int, lr: float, floor: float = 0.0) -> float:
    """Cosine decay from lr at step 0 to `floor` at step `total`."""
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
