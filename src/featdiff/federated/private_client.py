"""A private client's training: dp-promise's phases on its own records, one accountant for all it
releases; or, for the private controls, DP-SGD of the linear head over all head rounds
(`fedavg_head`) or one Gaussian release of its clipped class moments (`gaussian_stats`).
Imported only by private runs (it pulls in the accountants).

The seeded generators a caller hands in drive what need not be secret (Phase II's diffusion
draws) and name the client's streams; every Poisson mask and every Gaussian noise draw comes
from the client's private generators (`featdiff.privacy.noise`): the operating system's entropy,
or with `privacy.reproducible_noise` a named stream of the caller's generator's seed."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import Tensor, nn

from featdiff.config import DiffusionConfig, PrivacyConfig, RunConfig
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.privacy.controls import ControlPlan, plan_control, release_moments, train_private_head
from featdiff.privacy.dp_promise import clip_to_norm, phase_state, train_phase_one, train_phase_two
from featdiff.privacy.noise import PrivateNoise, private_noise
from featdiff.privacy.plan import PrivacyPlan, plan_privacy
from featdiff.statistics import SufficientStatistics


def client_privacy(config: RunConfig, size: int) -> tuple[PrivacyConfig, int]:
    """The privacy section as this client runs it: batches no larger than its records, and Phase
    II long enough for the warm-up's steps (returned) plus `rounds × local_steps` round steps,
    counted as if the client took part in every round."""
    privacy, federated = config.privacy, config.federated
    phase_one_batch, phase_two_batch = min(privacy.phase_one_batch, size), min(privacy.phase_two_batch, size)
    warmup_steps = math.ceil(privacy.phase_two_epochs * size / phase_two_batch)
    total = warmup_steps + federated.rounds * federated.local_steps
    update = {"phase_one_batch": phase_one_batch, "phase_two_batch": phase_two_batch, "phase_two_epochs": total * phase_two_batch / size}
    if federated.private_refine and privacy.epsilon is not None:  # the head's DP-SGD gets the rest of the budget
        update["epsilon"] = privacy.epsilon * privacy.release_share
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


def client_noise(privacy: PrivacyConfig, stream: torch.Generator, phase: str) -> PrivateNoise:
    """The private generators of one phase of one client, on `stream`'s device; reproducible ones
    are named after `stream`'s seed (unique per client and round), entropy ones after nothing."""
    return private_noise(stream.initial_seed(), f"client dp/{phase}", reproducible=privacy.reproducible_noise, device=stream.device)


def private_warmup(
    model: nn.Module,
    records: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    config: RunConfig,
    generators: tuple[torch.Generator, torch.Generator],
) -> dict[str, float]:
    """Phase I, then the warm-up's share of Phase II; returns the ε the client's plan claims.
    `generators`: the seeded streams of the two phases (Phase I draws nothing seeded: its
    diffusion draw is its mechanism)."""
    size = len(labels)
    plan = client_plan(config, size, records.shape[1])
    privacy, warmup_steps = client_privacy(config, size)
    objective = _objective(schedule, config.diffusion)
    ema_decay = config.diffusion.ema_decay
    noise = client_noise(privacy, generators[0], "phase I")
    first = phase_state(model, size=size, batch=privacy.phase_one_batch, lr=privacy.lr, ema_decay=ema_decay, noise=noise)
    train_phase_one(first, records, objective, privacy, plan, noise=noise)
    noise = client_noise(privacy, generators[1], "phase II")
    second = phase_state(
        model, size=size, batch=privacy.phase_two_batch, lr=privacy.lr, ema_decay=ema_decay, noise=noise, draws=generators[1]
    )
    train_phase_two(second, records, labels, objective, privacy, with_phase_two_steps(plan, warmup_steps), noise=noise)
    return {"epsilon": plan.epsilon, "noise-multiplier": plan.phase_two.noise_multiplier}


def private_round(
    model: nn.Module, records: Tensor, labels: Tensor, schedule: NoiseSchedule, config: RunConfig, generator: torch.Generator
) -> None:
    """`local_steps` more steps of the client's Phase II DP-SGD, from the broadcast weights;
    `generator` is the round's seeded stream (diffusion draws)."""
    size = len(labels)
    plan = client_plan(config, size, records.shape[1])
    privacy = client_privacy(config, size)[0]
    noise = client_noise(privacy, generator, "round")
    state = phase_state(
        model, size=size, batch=privacy.phase_two_batch, lr=privacy.lr, ema_decay=config.diffusion.ema_decay, noise=noise, draws=generator
    )
    objective = _objective(schedule, config.diffusion)
    train_phase_two(state, records, labels, objective, privacy, with_phase_two_steps(plan, config.federated.local_steps), noise=noise)


def _objective(schedule: NoiseSchedule, diffusion: DiffusionConfig) -> DenoisingObjective:
    """The client's objective on the schedule its caller built (the caller's, so both agree)."""
    return DenoisingObjective(schedule, diffusion.resolved_prediction(), diffusion.resolved_weighting())


HEAD_ALGORITHMS = ("fedavg_head",)
MOMENT_ALGORITHMS = ("gaussian_stats",)


def head_steps_per_round(config: RunConfig, size: int) -> int:
    """A client's DP-SGD steps in one head round: `head_local_epochs` passes of Poisson batches."""
    batch = min(config.privacy.linear_batch, size)
    return math.ceil(config.federated.head_local_epochs * size / batch)


def client_head_plan(config: RunConfig, size: int, feature_dim: int) -> ControlPlan:
    """A private client's DP-SGD of the head over every head round (counted as if it took part in
    all): σ calibrated so the whole costs at most privacy.epsilon, after the client's private
    denoiser when a denoiser run refines its head (`federated.private_refine`). Its counts are not
    released (they travel in clear in the setup, outside what a federated guarantee covers)."""
    steps = config.federated.head_rounds * head_steps_per_round(config, size)
    earlier = () if config.federated.algorithm in HEAD_ALGORITHMS else tuple(client_plan(config, size, feature_dim).phases)
    return _control_plan("dp_linear", config.privacy, size, steps, earlier)


def client_moments_plan(config: RunConfig, size: int) -> ControlPlan:
    """A private client's one release of its clipped class sums and outer products."""
    return _control_plan("dp_gaussian", config.privacy, size, None)


@functools.cache
def _control_plan(control: str, privacy: PrivacyConfig, size: int, steps: int | None, earlier: tuple = ()) -> ControlPlan:
    """Calibrated once per process (a client keeps its plan across rounds)."""
    return plan_control(control, privacy, size, release_counts=False, steps=steps, earlier=earlier)


def check_client_budget(config: RunConfig, size: int, feature_dim: int) -> None:
    """Raise the UserError a client of `size` records would meet with this config's algorithm."""
    algorithm = config.federated.algorithm
    if algorithm in MOMENT_ALGORITHMS:
        client_moments_plan(config, size)
        return
    if algorithm not in HEAD_ALGORITHMS:
        client_plan(config, size, feature_dim)
    if algorithm in HEAD_ALGORITHMS or config.federated.private_refine:
        client_head_plan(config, size, feature_dim)


def private_head_round(head: nn.Linear, features: Tensor, labels: Tensor, config: RunConfig, generator: torch.Generator) -> float:
    """One head round of a private client: this round's share of its DP-SGD steps, with the
    logit-adjusted loss under its own prior, from the broadcast head; returns the ε of its plan."""
    size = len(labels)
    plan = dataclasses.replace(client_head_plan(config, size, features.shape[1]), sgd_steps=head_steps_per_round(config, size))
    counts = torch.bincount(labels, minlength=head.out_features).double().clamp_min(1.0)
    offsets = torch.log(counts / counts.sum()).float()
    records = clip_to_norm(features, config.privacy.norm_bound)
    noise = client_noise(config.privacy, generator, "head")
    train_private_head(head, records, labels, offsets=offsets, plan=plan, privacy=config.privacy, noise=noise)
    return plan.epsilon


def private_moments(features: Tensor, labels: Tensor, num_classes: int, config: RunConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """A private client's class counts (in clear), and its clipped class sums and outer products
    with Gaussian noise on the classes it holds (which classes it holds is in its counts)."""
    size = len(labels)
    plan = client_moments_plan(config, size)
    counts = torch.bincount(labels, minlength=num_classes).double()
    records = clip_to_norm(features.double(), config.privacy.norm_bound)
    noise = client_noise(config.privacy, generator, "moments")
    released = release_moments(records, labels, counts, plan, noise.gaussian)
    held = (counts > 0).double()
    exact_zero = SufficientStatistics.of(records, labels, num_classes)  # zero for the classes it does not hold
    sums = torch.where(held[:, None] > 0, released.sums, exact_zero.sums)
    outer = torch.where(held[:, None, None] > 0, released.outer, exact_zero.outer)
    return {"counts": counts, "sums": sums, "outer": outer, "epsilon": torch.tensor(plan.epsilon)}
