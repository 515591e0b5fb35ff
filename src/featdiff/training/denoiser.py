"""Training the feature denoiser on (standardised) feature vectors (LDMLR's stage 2).

An exponential moving average of the weights is what samples: it is the cheap, standard way to get
a denoiser that does not depend on where the last few noisy steps happened to land.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from featdiff.config import DiffusionConfig
from featdiff.diffusion.losses import diffusion_loss_per_sample
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.progress import progress


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def denoiser_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x0: torch.Tensor,
    labels: torch.Tensor,
    schedule: NoiseSchedule,
    config: DiffusionConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = diffusion_loss_per_sample(
        model,
        x0,
        labels,
        schedule,
        prediction=config.resolved_prediction(),
        weighting=config.resolved_weighting(),
        generator=generator,
    ).mean()
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_denoiser_optimizer(model: nn.Module, config: DiffusionConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def train_denoiser(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    schedule: NoiseSchedule,
    config: DiffusionConfig,
    generator: torch.Generator,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 1000,
    log: Callable[[int, float], None] | None = None,
) -> AveragedModel:
    """Run `config.steps` optimiser steps on shuffled mini-batches; returns the EMA model.

    The learning rate decays along a cosine to 10% of its start, which settles the EMA weights.
    """
    device = next(model.parameters()).device
    features, labels = features.to(device), labels.to(device)
    optimizer = make_denoiser_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=0.1 * config.lr)
    ema = make_ema(model, config.ema_decay)
    n = labels.numel()
    batch = min(config.batch_size, n)
    order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    step, cursor, running = 0, 0, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        step, cursor, running = resume["step"], resume["cursor"], resume["running"]
        order = resume["order"].to(device)
    bar = progress(total=config.steps, initial=step, desc="denoiser")
    while step < config.steps:
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=generator, device=generator.device).to(device), 0
        index = order[cursor : cursor + batch]
        cursor += batch
        loss = float(denoiser_step(model, optimizer, features[index], labels[index], schedule, config, generator))
        scheduler.step()
        ema.update_parameters(model)
        step += 1
        running = loss if running is None else 0.98 * running + 0.02 * loss
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
            if log is not None:
                log(step, running)
        if checkpoint is not None and step % checkpoint_every == 0 and step < config.steps:
            checkpoint(
                {
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "step": step,
                    "cursor": cursor,
                    "running": running,
                    "order": order.cpu(),
                }
            )
    bar.close()
    return ema
