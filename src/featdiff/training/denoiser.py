"""Training the feature denoiser (LDMLR's stage 2) with the shared objective and loop.

`denoiser_state` builds the training state (AdamW, EMA, data position, a generator for the
batches and one for the diffusion draws); `denoiser_loss` is the loss of one batch at fresh draws; `train_denoiser`
runs the state to `config.steps` with a cosine learning rate that decays to 10 % of its start
(which settles the EMA weights). A federated client or a DP trainer builds the same state and
calls the same loss with its own step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from featdiff.config import DiffusionConfig
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.distributed import shard
from featdiff.training.loop import StepFunction, apply_update, cosine_lr, run_steps
from featdiff.training.state import ShuffledBatches, TrainState, make_ema


def make_denoiser_optimizer(model: nn.Module, config: DiffusionConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def denoiser_state(
    model: nn.Module, size: int, config: DiffusionConfig, generator: torch.Generator, *, draws: torch.Generator
) -> TrainState:
    """A fresh state for `size` training rows: batches of `config.batch_size` (a remainder that
    does not fill a batch waits for the next shuffle), EMA with `config.ema_decay`.

    `generator` orders the data; `draws` draws every (t, ε), so that a change in how the data is
    ordered never moves the diffusion draws."""
    return TrainState(
        model=model,
        optimizers={"denoiser": make_denoiser_optimizer(model, config)},
        generators={"data": generator, "diffusion": draws},
        batches=ShuffledBatches(size, config.batch_size, generator, drop_last=True),
        ema=make_ema(model, config.ema_decay),
    )


def denoiser_loss(
    model: nn.Module,
    x0: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    config: DiffusionConfig,
    generator: torch.Generator | None,
    draws: int = 1,
) -> Tensor:
    """Per-example loss (B,) of a batch at fresh draws of (t, ε) from `generator`."""
    objective = DenoisingObjective(schedule, config.resolved_prediction(), config.resolved_weighting())
    t, noise = objective.draw(x0.shape[0], x0.shape[1], draws=draws, generator=generator, device=x0.device, dtype=x0.dtype)
    return objective.loss(model, x0, labels, t, noise)


def sharded_denoiser_loss(
    model: nn.Module, x0: Tensor, labels: Tensor, schedule: NoiseSchedule, config: DiffusionConfig, generator: torch.Generator | None
) -> Tensor:
    """`denoiser_loss` under torchrun: the draws for the whole batch, then this rank's rows."""
    objective = DenoisingObjective(schedule, config.resolved_prediction(), config.resolved_weighting())
    t, noise = objective.draw(x0.shape[0], x0.shape[1], generator=generator, device=x0.device, dtype=x0.dtype)
    x0, labels, t, noise = shard(x0, labels, t, noise)
    return objective.loss(model, x0, labels, t, noise)


def denoiser_step(state: TrainState, features: Tensor, labels: Tensor, schedule: NoiseSchedule, config: DiffusionConfig) -> StepFunction:
    """One optimiser step of the shared objective on a batch of rows of `features` (already
    scaled), with (t, ε) drawn from the state's diffusion generator."""
    device = next(state.model.parameters()).device
    features, labels = features.to(device), labels.to(device)
    generator = state.generators["diffusion"]
    optimizer = state.optimizers["denoiser"]

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        index = index.to(device)
        batch_labels = labels[index]
        if config.label_dropout > 0:
            batch_labels = dropped_labels(batch_labels, config.label_dropout, state.model.null_class, generator)
        loss = sharded_denoiser_loss(state.model, features[index], batch_labels, schedule, config, generator).mean()
        apply_update(loss, optimizer)
        return {"loss": loss.detach()}

    return step


def dropped_labels(labels: Tensor, rate: float, null_class: int, generator: torch.Generator) -> Tensor:
    """`labels` with each replaced by the null class with probability `rate` (one uniform draw per
    label from `generator`): the unconditional model that classifier-free guidance mixes in."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < rate
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def train_denoiser(
    state: TrainState,
    features: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    config: DiffusionConfig,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 1000,
    log: Callable[[int, float], None] | None = None,
) -> TrainState:
    """Run `state` to `config.steps` optimiser steps on `features` (already scaled); sample from
    `state.ema.module` afterwards."""
    return run_steps(
        state,
        config.steps,
        denoiser_step(state, features, labels, schedule, config),
        lr_at=lambda s: cosine_lr(s, config.steps, config.lr, floor=0.1 * config.lr),
        checkpoint=checkpoint,
        checkpoint_every_steps=checkpoint_every,
        log=None if log is None else lambda s, running: log(s, running["loss"]),
        desc="denoiser",
    )
