"""The end-to-end training loop: batches of uint8 images, augmented on the device, fed to the
step functions the strategy calls for, with per-epoch logs, checkpoints and an epoch hook (for
diagnostics)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from featdiff.config import EndToEndConfig, FinetuneConfig, PseudoFilterConfig
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.e2e import steps as e2e_steps
from featdiff.e2e.model import EndToEndModel
from featdiff.e2e.strategies import denoiser_steps_per_batch, generates_at, term_weights
from featdiff.progress import progress
from featdiff.training.finetune import configure_trainable, make_encoder_optimizer, set_learning_rates, set_train_mode

Augment = Callable[[Tensor, torch.Generator], Tensor]
Normalize = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class EndToEndSettings:
    finetune: FinetuneConfig
    e2e: EndToEndConfig
    filter: PseudoFilterConfig


def make_denoiser_optimizer(model: EndToEndModel, config: EndToEndConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.denoiser.parameters(), lr=config.denoiser_lr, weight_decay=0.0)


def train_end_to_end(
    model: EndToEndModel,
    images: Tensor,
    labels: Tensor,
    settings: EndToEndSettings,
    schedule: NoiseSchedule,
    augment: Augment,
    normalize: Normalize,
    generator: torch.Generator,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train for `finetune.epochs` epochs; returns the per-epoch mean of every logged term."""
    finetune, config = settings.finetune, settings.e2e
    device = model.feature_floor.device
    images, labels = images.to(device), labels.to(device)
    configure_trainable(model.encoder, finetune.trainable)
    optimizers = e2e_steps.Optimizers(make_encoder_optimizer(model.encoder, finetune), make_denoiser_optimizer(model, config))
    n = labels.numel()
    steps_per_epoch = math.ceil(n / finetune.batch_size)
    total_steps = finetune.epochs * steps_per_epoch
    start_epoch, history = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizers.encoder.load_state_dict(resume["encoder_optimizer"])
        optimizers.denoiser.load_state_dict(resume["denoiser_optimizer"])
        generator.set_state(resume["generator"])
        start_epoch, history = resume["epoch"], list(resume["history"])
    sampling_generator = torch.Generator(device=device)
    for epoch in range(start_epoch, finetune.epochs):
        order = torch.randperm(n, generator=generator, device=generator.device).to(device)
        # Noise for the diffusion and generation branches is drawn on the compute device, from a
        # generator re-seeded from the main one every epoch, so a resumed run draws the same.
        sampling_generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator, device=generator.device)))
        sums: dict[str, float] = {}
        started = time.perf_counter()
        cache = _pseudo_cache(model, config, schedule, epoch, finetune, steps_per_epoch, sampling_generator)
        bar = progress(range(steps_per_epoch), desc=f"e2e {config.strategy} epoch {epoch + 1}/{finetune.epochs}", unit="step")
        for step in bar:
            global_step = epoch * steps_per_epoch + step
            set_learning_rates(optimizers.encoder, global_step / total_steps, finetune)
            index = order[step * finetune.batch_size : (step + 1) * finetune.batch_size]
            batch = normalize(augment(images[index], generator))
            weights = term_weights(config, epoch + step / steps_per_epoch, finetune.epochs)
            set_train_mode(model.encoder, finetune.trainable)
            if config.strategy == "B":
                logged = _alternating_step(
                    model, optimizers, batch, labels[index], schedule, settings, weights, cache, step, sampling_generator
                )
            else:
                logged = e2e_steps.joint_step(
                    model,
                    optimizers,
                    batch,
                    labels[index],
                    schedule,
                    config,
                    settings.filter,
                    weights,
                    generate=generates_at(config, global_step),
                    generator=sampling_generator,
                )
            for name, value in logged.items():
                sums[name] = sums.get(name, 0.0) + value
        means = {name: total / steps_per_epoch for name, total in sums.items()}
        means |= {"epoch": epoch + 1, "epoch_s": time.perf_counter() - started}
        if config.clip_follows_encoder:
            model.follow_range()
        history.append(means)
        model.encoder.eval()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, means)
        if checkpoint is not None and epoch + 1 < finetune.epochs:
            checkpoint(
                {
                    "model": model.state_dict(),
                    "encoder_optimizer": optimizers.encoder.state_dict(),
                    "denoiser_optimizer": optimizers.denoiser.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                    "history": history,
                }
            )
    model.encoder.eval()
    return history


def _pseudo_cache(
    model: EndToEndModel,
    config: EndToEndConfig,
    schedule: NoiseSchedule,
    epoch: int,
    finetune: FinetuneConfig,
    steps_per_epoch: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor] | None:
    """Strategy B with `cached_pseudo`: one epoch's pseudo-features, sampled at the epoch's start."""
    if config.strategy != "B" or not config.cached_pseudo:
        return None
    weights = term_weights(config, float(epoch), finetune.epochs)
    count = e2e_steps.pseudo_count(finetune.batch_size, weights.pseudo_share)
    if count == 0:
        return None
    return e2e_steps.frozen_pseudo(model, count * steps_per_epoch, schedule, config, generator)


def _alternating_step(
    model: EndToEndModel,
    optimizers: e2e_steps.Optimizers,
    images: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    settings: EndToEndSettings,
    weights: e2e_steps.TermWeights,
    cache: tuple[Tensor, Tensor] | None,
    step: int,
    generator: torch.Generator,
) -> dict[str, float]:
    config = settings.e2e
    count = e2e_steps.pseudo_count(labels.shape[0], weights.pseudo_share)
    pseudo = None
    if weights.generation_on and count > 0:
        if cache is not None:
            pseudo = (cache[0][step * count : (step + 1) * count], cache[1][step * count : (step + 1) * count])
        else:
            pseudo = e2e_steps.frozen_pseudo(model, count, schedule, config, generator)
    logged, features = e2e_steps.encoder_step(model, optimizers.encoder, images, labels, pseudo, config, settings.filter, weights)
    for _ in range(denoiser_steps_per_batch(config)):
        logged |= e2e_steps.denoiser_step(model, optimizers.denoiser, features, labels, schedule, config, weights, generator)
    return logged
