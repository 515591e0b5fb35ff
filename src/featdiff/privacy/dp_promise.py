"""dp-promise's two-phase training of the feature denoiser (Wang et al., USENIX Security 2024),
on the shared training core.

- `private_records`: each feature vector clipped to L2 norm R and scaled by √D/R, both fixed a
  priori, so a record's sensitivity is known without looking at the data.
- Phase I (t ∈ [S, T)): label-free (the null class), Poisson batches, one noise draw per visit,
  plain gradients: the forward noise at t ≥ S is the Gaussian mechanism the plan accounts for, so
  Phase I's diffusion draw (t, ε) comes from the private generator, like its Poisson masks.
- Phase II (t ∈ [0, S)): DP-SGD with K draws per example averaged before clipping to C, noise
  σ·C on the sum, divided by the expected batch; the optimizer's step is the plain Adam step.
  Its diffusion draws (t, ε) only shape the loss (DP-SGD holds for any loss fixed independently
  of the data), so they come from a seeded stream; the Poisson masks and the σ·C noise come from
  the private generators (`featdiff.privacy.noise`: the operating system's entropy unless
  `privacy.reproducible_noise`). Not private (σ = None): the same phase with the plain mean gradient.

Every random draw has its own stream, named after the run (`stream`) and its role:
"<stream>/denoiser initialisation", "<stream>/phase I/…" and "<stream>/phase II/…" (masks and
Gaussian noise, seeded only when reproducible), "<stream>/phase II diffusion draws".

Each phase is a `TrainState` run by the shared loop, so it checkpoints and resumes (bit for bit
when the noise is reproducible; a checkpoint never holds an entropy-seeded generator). Phase I
ends by copying its EMA weights into the model (as dp-promise does), Phase II keeps a fresh EMA,
which is post-processing and costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from featdiff.config import DiffusionConfig, PrivacyConfig
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.diffusion.scaling import Standardizer
from featdiff.generation.pseudo import FeatureGenerator, build_denoiser
from featdiff.privacy.dp_sgd import apply_private_gradients, chunked_clipped_sum, noised_mean, trainable
from featdiff.privacy.ghost import ghost_clipped_sum
from featdiff.privacy.noise import PrivateNoise, private_noise
from featdiff.privacy.plan import PrivacyPlan
from featdiff.seeding import initialise, named_generator
from featdiff.training.loop import apply_update, run_steps
from featdiff.training.state import PoissonBatches, TrainState, make_ema


def clip_to_norm(features: Tensor, norm_bound: float) -> Tensor:
    """x·min(1, R/‖x‖): every row in the L2 ball of radius R."""
    return features * (norm_bound / features.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)


def private_records(features: Tensor, norm_bound: float) -> Tensor:
    """x·min(1, R/‖x‖)·√D/R: every record in the L2 ball of radius √D, whatever the data."""
    return clip_to_norm(features, norm_bound) * (features.shape[1] ** 0.5 / norm_bound)


def initialisation_generator(seed: int, stream: str) -> torch.Generator:
    return named_generator(seed, f"{stream}/denoiser initialisation")


def phase_one_noise(seed: int, stream: str, privacy: PrivacyConfig, device: torch.device | str) -> PrivateNoise:
    return private_noise(seed, f"{stream}/phase I", reproducible=privacy.reproducible_noise, device=device)


def phase_two_noise(seed: int, stream: str, privacy: PrivacyConfig, device: torch.device | str) -> PrivateNoise:
    return private_noise(seed, f"{stream}/phase II", reproducible=privacy.reproducible_noise, device=device)


def phase_two_draws(seed: int, stream: str, device: torch.device | str) -> torch.Generator:
    return named_generator(seed, f"{stream}/phase II diffusion draws", device)


def phase_state(
    model: nn.Module,
    *,
    size: int,
    batch: int,
    lr: float,
    ema_decay: float,
    noise: PrivateNoise,
    draws: torch.Generator | None = None,
) -> TrainState:
    """One phase's state: Poisson batches of expected size `batch` from `noise.masks`, and the
    seeded diffusion-draw stream `draws` (Phase II; Phase I has none). Only seeded generators are
    part of the state, so only they reach a checkpoint."""
    generators = ({"diffusion draws": draws} if draws is not None else {}) | noise.checkpointed()
    return TrainState(
        model=model,
        optimizers={"denoiser": torch.optim.Adam(model.parameters(), lr=lr, fused=True)},
        generators=generators,
        batches=PoissonBatches(size, min(1.0, batch / size), noise.masks),
        ema=make_ema(model, ema_decay),
    )


def train_phase_one(
    state: TrainState,
    records: Tensor,
    objective: DenoisingObjective,
    privacy: PrivacyConfig,
    plan: PrivacyPlan,
    *,
    noise: PrivateNoise,
    checkpoint: Callable[[dict], None] | None = None,
) -> TrainState:
    """Phase I to its planned step count; the model ends with its EMA weights. Its (t, ε) are the
    mechanism's noise, drawn from `noise.gaussian`."""
    model = state.model
    device = next(model.parameters()).device
    records = records.to(device)
    optimizer = state.optimizers["denoiser"]
    null = torch.tensor(model.null_class, device=device)

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        x0 = records[index.to(device)]
        t, eps = objective.draw(len(x0), x0.shape[1], generator=noise.gaussian, device=device, dtype=x0.dtype, low=privacy.split_timestep)
        if len(x0) == 0:
            return {}
        losses = objective.loss(model, x0, null.expand(len(x0)), t, eps)
        apply_update(losses.sum() / privacy.phase_one_batch, optimizer)
        return {"loss": losses.mean().detach()}

    steps = plan.phase_one.steps if plan.phase_one is not None else 0
    run_steps(state, steps, step, checkpoint=checkpoint, checkpoint_every_steps=500, desc="dp-promise phase I")
    if state.step > 0:
        model.load_state_dict(state.ema.module.state_dict())
    return state


def train_phase_two(
    state: TrainState,
    records: Tensor,
    labels: Tensor,
    objective: DenoisingObjective,
    privacy: PrivacyConfig,
    plan: PrivacyPlan,
    *,
    noise: PrivateNoise,
    checkpoint: Callable[[dict], None] | None = None,
    noise_off: bool = False,
) -> TrainState:
    """Phase II to its planned step count (DP-SGD when the plan is private); sample from the EMA.
    (t, ε) come from the state's seeded "diffusion draws", the σ·C noise from `noise.gaussian`.
    `noise_off` keeps the clipping but adds no noise: the audit's negative control, which claims
    the plan's ε while breaking it."""
    model, draws = state.model, state.generators["diffusion draws"]
    device = next(model.parameters()).device
    records, labels = records.to(device), labels.to(device)
    optimizer = state.optimizers["denoiser"]
    expected_batch = privacy.phase_two_batch

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        index = index.to(device)
        x0, y = records[index], labels[index]
        t, eps = objective.draw(
            len(x0), x0.shape[1], draws=privacy.draws, generator=draws, device=device, dtype=x0.dtype, high=privacy.split_timestep
        )
        if plan.phase_two is None:
            if len(x0) == 0:
                return {}
            losses = objective.loss(model, x0, y, t, eps)
            apply_update(losses.sum() / expected_batch, optimizer)
            return {"loss": losses.mean().detach()}
        summed, norms = _clipped_sum(model, x0, y, t, eps, objective, privacy)
        sigma = 0.0 if noise_off else plan.phase_two.noise_multiplier
        private = noised_mean(
            summed, clip_norm=privacy.clip_norm, noise_multiplier=sigma, expected_batch=expected_batch, generator=noise.gaussian
        )
        apply_private_gradients(model, private, optimizer)
        return {"clipped_share": (norms > privacy.clip_norm).float().mean()} if len(norms) else {}

    steps = plan.phase_two.steps if plan.phase_two is not None else _steps(privacy, plan.dataset_size)
    run_steps(state, steps, step, checkpoint=checkpoint, checkpoint_every_steps=100, desc="dp-promise phase II")
    return state


def _steps(privacy: PrivacyConfig, size: int) -> int:
    return -(-int(privacy.phase_two_epochs * size) // privacy.phase_two_batch)


def _clipped_sum(
    model: nn.Module, x0: Tensor, y: Tensor, t: Tensor, eps: Tensor, objective: DenoisingObjective, privacy: PrivacyConfig
) -> tuple[dict[str, Tensor], Tensor]:
    """Σ_i clip_C(∇L_i) by the configured path; an empty batch contributes zeros."""
    if len(x0) == 0:
        return {name: torch.zeros_like(p) for name, p in trainable(model).items()}, x0.new_zeros(0)
    if privacy.gradients == "ghost":
        return ghost_clipped_sum(model, lambda: objective.loss(model, x0, y, t, eps), privacy.clip_norm)
    return chunked_clipped_sum(privacy.gradients, model, x0, y, t, eps, objective, clip_norm=privacy.clip_norm)


def generator_for(model: nn.Module, plan: PrivacyPlan, objective: DenoisingObjective) -> FeatureGenerator:
    """The trained denoiser as a pseudo-feature generator in the encoder's (clipped) feature space:
    decoding undoes the fixed scale, and x̂0 is confined to the public ball of radius √D."""
    feature_dim = model.feature_dim
    scaler = Standardizer(feature_dim)
    scaler.std.fill_(1 / plan.feature_scale)
    return FeatureGenerator(model.eval(), scaler, math.sqrt(feature_dim), objective.schedule, objective.prediction)


def fit_private_generator(
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    privacy: PrivacyConfig,
    diffusion: DiffusionConfig,
    plan: PrivacyPlan,
    seed: int,
    device: torch.device,
    stream: str = "ldmlr_dp",
    noise_off: bool = False,
) -> FeatureGenerator:
    """Both phases on `features`, in memory (no run folder): what membership experiments and audits
    train, with the method's recipe. `stream` names its random streams (the method's own by
    default, so with reproducible noise this is the run's denoiser)."""
    objective = DenoisingObjective.of(diffusion)
    records = private_records(features, privacy.norm_bound)
    model = initialise(build_denoiser(records.shape[1], num_classes, diffusion), initialisation_generator(seed, stream)).to(device)
    size, ema_decay = len(labels), diffusion.ema_decay
    noise = phase_one_noise(seed, stream, privacy, device)
    first = phase_state(model, size=size, batch=privacy.phase_one_batch, lr=privacy.lr, ema_decay=ema_decay, noise=noise)
    train_phase_one(first, records, objective, privacy, plan, noise=noise)
    noise = phase_two_noise(seed, stream, privacy, device)
    second = phase_state(
        model,
        size=size,
        batch=privacy.phase_two_batch,
        lr=privacy.lr,
        ema_decay=ema_decay,
        noise=noise,
        draws=phase_two_draws(seed, stream, device),
    )
    train_phase_two(second, records, labels, objective, privacy, plan, noise=noise, noise_off=noise_off)
    return generator_for(second.ema.module, plan, objective)
