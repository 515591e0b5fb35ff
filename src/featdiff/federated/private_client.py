"""A private client's training: dp-promise's phases on its own records, one accountant for all it
releases. Imported only by private runs (it pulls in the accountants)."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import Tensor, nn

from featdiff.config import DiffusionConfig, PrivacyConfig, RunConfig
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.privacy.dp_promise import phase_state, train_phase_one, train_phase_two
from featdiff.privacy.plan import PrivacyPlan, plan_privacy


def client_privacy(config: RunConfig, size: int) -> tuple[PrivacyConfig, int]:
    """The privacy section as this client runs it: batches no larger than its records, and Phase
    II long enough for the warm-up's steps (returned) plus `rounds × local_steps` round steps,
    counted as if the client took part in every round."""
    privacy, federated = config.privacy, config.federated
    phase_one_batch, phase_two_batch = min(privacy.phase_one_batch, size), min(privacy.phase_two_batch, size)
    warmup_steps = math.ceil(privacy.phase_two_epochs * size / phase_two_batch)
    total = warmup_steps + federated.rounds * federated.local_steps
    update = {"phase_one_batch": phase_one_batch, "phase_two_batch": phase_two_batch, "phase_two_epochs": total * phase_two_batch / size}
    return privacy.model_copy(update=update), warmup_steps


def client_plan(config: RunConfig, size: int, feature_dim: int) -> PrivacyPlan:
    """One plan for all a private client will ever release (dp-promise's Phase I, its warm-up
    Phase II and its round steps), σ calibrated so that the whole costs at most privacy.epsilon;
    calibrated once per process (a client keeps its plan across rounds)."""
    return _plan(client_privacy(config, size)[0], config.diffusion, size, feature_dim)


@functools.cache
def _plan(privacy: PrivacyConfig, diffusion: DiffusionConfig, size: int, feature_dim: int) -> PrivacyPlan:
    return plan_privacy(privacy, diffusion, size, feature_dim)


def with_phase_two_steps(plan: PrivacyPlan, steps: int) -> PrivacyPlan:
    return dataclasses.replace(plan, phase_two=dataclasses.replace(plan.phase_two, steps=steps))


def private_warmup(
    model: nn.Module,
    records: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    config: RunConfig,
    generators: tuple[torch.Generator, torch.Generator],
) -> dict[str, float]:
    """Phase I, then the warm-up's share of Phase II; returns the ε the client's plan claims."""
    size = len(labels)
    plan = client_plan(config, size, records.shape[1])
    privacy, warmup_steps = client_privacy(config, size)
    first = phase_state(model, size, privacy.phase_one_batch, privacy, config.diffusion.ema_decay, generators[0])
    train_phase_one(first, records, schedule, privacy, config.diffusion, plan)
    second = phase_state(model, size, privacy.phase_two_batch, privacy, config.diffusion.ema_decay, generators[1])
    train_phase_two(second, records, labels, schedule, privacy, config.diffusion, with_phase_two_steps(plan, warmup_steps))
    return {"epsilon": plan.epsilon, "noise-multiplier": plan.phase_two.noise_multiplier}


def private_round(
    model: nn.Module, records: Tensor, labels: Tensor, schedule: NoiseSchedule, config: RunConfig, generator: torch.Generator
) -> None:
    """`local_steps` more steps of the client's Phase II DP-SGD, from the broadcast weights."""
    size = len(labels)
    plan = client_plan(config, size, records.shape[1])
    privacy = client_privacy(config, size)[0]
    state = phase_state(model, size, privacy.phase_two_batch, privacy, config.diffusion.ema_decay, generator)
    train_phase_two(state, records, labels, schedule, privacy, config.diffusion, with_phase_two_steps(plan, config.federated.local_steps))
