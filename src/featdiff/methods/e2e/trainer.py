"""The end-to-end training loop: the shared loop (`featdiff.training.loop.run_steps`) with a step
that feeds augmented batches to the step functions the strategy calls for.

Randomness: the data generator shuffles and augments; at each epoch's start it seeds a second,
sampling generator (on the compute device) that draws the diffusion and generation branches'
noise. Both are part of the `TrainState`, so a run stopped at any step resumes bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from featdiff.methods.e2e import steps as e2e_steps
from featdiff.methods.e2e.model import EndToEndModel
from featdiff.methods.e2e.steps import EndToEndSettings
from featdiff.methods.e2e.strategies import denoiser_steps_per_batch, generates_at, term_weights
from featdiff.training.finetune import configure_trainable, finetune_lr, make_encoder_optimizer, set_train_mode
from featdiff.training.loop import run_steps
from featdiff.training.state import ShuffledBatches, TrainState

Augment = Callable[[Tensor, torch.Generator], Tensor]
Normalize = Callable[[Tensor], Tensor]


def end_to_end_state(model: EndToEndModel, size: int, settings: EndToEndSettings, generator: torch.Generator) -> TrainState:
    """E's trainable scope and optimizer as `finetune` sets them, AdamW for ε_θ, and the two generators."""
    configure_trainable(model.encoder, settings.finetune.trainable)
    device = model.feature_floor.device
    denoiser_optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=settings.e2e.denoiser_lr, weight_decay=0.0)
    return TrainState(
        model=model,
        optimizers={"encoder": make_encoder_optimizer(model.encoder, settings.finetune), "denoiser": denoiser_optimizer},
        generators={"data": generator, "sampling": torch.Generator(device=device)},
        batches=ShuffledBatches(size, settings.finetune.batch_size, generator),
    )


def train_end_to_end(
    state: TrainState,
    images: Tensor,
    labels: Tensor,
    settings: EndToEndSettings,
    augment: Augment,
    normalize: Normalize,
    checkpoint: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    until: int | None = None,
) -> list[dict[str, float]]:
    """Train to `finetune.epochs` epochs (or to step `until`); returns the per-epoch mean of every
    logged term. The encoder's learning rate follows `finetune` (its `lr_scale` per group); ε_θ's
    stays at `e2e.denoiser_lr`."""
    finetune, config = settings.finetune, settings.e2e
    model: EndToEndModel = state.model
    device = model.feature_floor.device
    images, labels = images.to(device), labels.to(device)
    generator, sampling = state.generators["data"], state.generators["sampling"]
    optimizers = e2e_steps.Optimizers(state.optimizers["encoder"], state.optimizers["denoiser"])
    per_epoch = state.batches.steps_per_epoch
    total = finetune.epochs * per_epoch

    def start_epoch(state: TrainState) -> None:
        # Re-seeded from the data generator every epoch, so the branches' noise of an epoch
        # depends only on where the run is, not on how many draws the last epoch made.
        sampling.manual_seed(int(torch.randint(2**62, (1,), generator=generator, device=generator.device)))
        state.extra["pseudo_cache"] = _pseudo_cache(model, settings, state.batches.epoch, per_epoch, sampling)

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        epoch, within = divmod(state.step, per_epoch)
        for group in optimizers.encoder.param_groups:
            group["lr"] = finetune_lr(state.step / total, finetune) * group["lr_scale"]
        index = index.to(device)
        batch = normalize(augment(images[index], generator))
        weights = term_weights(config, epoch + within / per_epoch, finetune.epochs)
        set_train_mode(model.encoder, finetune.trainable)
        if config.strategy == "B":
            return _alternating_step(
                model, optimizers, batch, labels[index], settings, weights, state.extra["pseudo_cache"], within, sampling
            )
        return e2e_steps.joint_step(
            model,
            optimizers,
            batch,
            labels[index],
            settings,
            weights,
            generate=generates_at(config, state.step),
            generator=sampling,
        )

    def end_epoch(state: TrainState, means: dict[str, float]) -> None:
        if config.clip_follows_encoder:
            model.follow_range()
        model.encoder.eval()
        if on_epoch_end is not None:
            on_epoch_end(int(means["epoch"]), means)

    run_steps(
        state,
        total if until is None else until,
        step,
        on_epoch_start=start_epoch,
        on_epoch_end=end_epoch,
        checkpoint=checkpoint,
        checkpoint_every_epochs=1,
        log_every=10**9,
        desc=f"e2e {config.strategy}",
    )
    model.encoder.eval()
    return state.history


def _pseudo_cache(
    model: EndToEndModel, settings: EndToEndSettings, epoch: int, per_epoch: int, generator: torch.Generator
) -> tuple[Tensor, Tensor] | None:
    """Strategy B with `cached_pseudo`: one epoch's pseudo-features, sampled at the epoch's start."""
    config = settings.e2e
    if config.strategy != "B" or not config.cached_pseudo:
        return None
    weights = term_weights(config, float(epoch), settings.finetune.epochs)
    count = e2e_steps.pseudo_count(settings.finetune.batch_size, weights.pseudo_share)
    if count == 0:
        return None
    return e2e_steps.frozen_pseudo(model, count * per_epoch, settings, generator)


def _alternating_step(
    model: EndToEndModel,
    optimizers: e2e_steps.Optimizers,
    images: Tensor,
    labels: Tensor,
    settings: EndToEndSettings,
    weights: e2e_steps.TermWeights,
    cache: tuple[Tensor, Tensor] | None,
    step: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    config = settings.e2e
    count = e2e_steps.pseudo_count(labels.shape[0], weights.pseudo_share)
    pseudo = None
    if weights.generation_on and count > 0:
        if cache is not None:
            pseudo = (cache[0][step * count : (step + 1) * count], cache[1][step * count : (step + 1) * count])
        else:
            pseudo = e2e_steps.frozen_pseudo(model, count, settings, generator)
    logged, features = e2e_steps.encoder_step(model, optimizers.encoder, images, labels, pseudo, settings, weights)
    for _ in range(denoiser_steps_per_batch(config)):
        logged |= e2e_steps.denoiser_step(model, optimizers.denoiser, features, labels, settings, weights, generator)
    return logged
