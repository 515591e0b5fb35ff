"""One training iteration of end-to-end training, as plain functions of (model, batch, config).

Which parameters each term updates:

| term | E (encoder) | G (classifier) | ε_θ (denoiser) |
| --- | --- | --- | --- |
| L_real = CE(G(E(x)), y) | yes | yes | – |
| L_LDM, L_proto, L_cov / L_rad | only if `ldm_to_encoder` | – | yes |
| L_ge = CE(G(ẑ₀), y) | – | yes | only if `ge_to_denoiser` |
| collapse guard (variance floor on E(x)) | if `ldm_to_encoder` | – | – |

By default the diffusion branch sees E's features detached: the denoiser follows the encoder, but
the encoder is never rewarded for making its features easy to denoise (which it can do by
shrinking them: collapse). Prototypes, covariances and scaling statistics are EMA buffers, never
trained.

Each step computes its loss and applies it with `featdiff.training.loop.apply_update`.
Strategy A calls `joint_step`; strategy B alternates `encoder_step` (ε_θ frozen) and
`denoiser_step` on that batch's detached features (E, G frozen), sharing one encoder forward;
strategy C calls `joint_step` with the terms its phase allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from featdiff.config import DiffusionConfig, EndToEndConfig, FinetuneConfig, PseudoFilterConfig
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.generation.filter import band_weights
from featdiff.generation.pseudo import SamplerSettings
from featdiff.methods.e2e.losses import covariance_loss, prototype_loss, radius_loss, semantic_timestep_weight, variance_floor_loss
from featdiff.methods.e2e.model import EndToEndModel
from featdiff.statistics import ClassGeometry, trace_radius
from featdiff.training.finetune import EncoderOptimizer
from featdiff.training.loop import apply_update


@dataclass(frozen=True)
class EndToEndSettings:
    """Everything the steps read from the run's config, and the noise schedule."""

    finetune: FinetuneConfig
    e2e: EndToEndConfig
    filter: PseudoFilterConfig
    diffusion: DiffusionConfig
    schedule: NoiseSchedule
    logit_offsets: Tensor | None = None
    """log π of what G trains on, added to its logits in the real and pseudo terms
    (`finetune.loss: logit_adjusted`); None for cross-entropy."""

    def logits(self, model: EndToEndModel, features: Tensor) -> Tensor:
        logits = model.classifier(features)
        return logits if self.logit_offsets is None else logits + self.logit_offsets.to(logits.device)


@dataclass(frozen=True)
class TermWeights:
    """The weights of one iteration's terms, as a strategy's schedule sets them."""

    sem: float = 1.0
    proto: float = 0.0
    cov: float = 0.0
    rad: float = 0.0
    ge: float = 0.0
    pseudo_share: float = 0.0

    @property
    def diffusion_on(self) -> bool:
        return self.sem > 0

    @property
    def generation_on(self) -> bool:
        return self.ge > 0 and self.pseudo_share > 0


@dataclass
class Optimizers:
    encoder: EncoderOptimizer
    denoiser: torch.optim.Optimizer


def diffusion_terms(
    model: EndToEndModel,
    features: Tensor,
    labels: Tensor,
    settings: EndToEndSettings,
    weights: TermWeights,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """L_LDM (the shared denoising objective, with `diffusion.prediction` and `weighting`) on
    standardised features, and the semantic terms on its x̂0 estimate z̃₀."""
    config, schedule = settings.e2e, settings.schedule
    scaled = model.standardizer.encode(features)
    objective = DenoisingObjective(schedule, settings.diffusion.resolved_prediction(), settings.diffusion.resolved_weighting())
    t, noise = objective.draw(scaled.shape[0], scaled.shape[1], generator=generator, device=scaled.device, dtype=scaled.dtype)
    denoised = objective.denoise(model.denoiser, scaled, labels, t, noise)
    terms = {"ldm": denoised.loss.mean()}
    estimate, t = denoised.x0_estimate[:, 0], t[:, 0]
    time_weight = semantic_timestep_weight(t, schedule, config.semantic_weighting, config.semantic_max_t).to(scaled.dtype)
    prototypes = model.standardizer.encode(model.stats.means)
    std = model.standardizer.std
    zero = scaled.new_zeros(())
    terms["proto"] = prototype_loss(estimate, labels, prototypes, time_weight) if weights.proto > 0 else zero
    terms["cov"], terms["rad"] = zero, zero
    if weights.cov > 0 or weights.rad > 0:
        covariances = model.stats.covariances / (std[:, None] * std[None, :])
        if weights.cov > 0:
            terms["cov"] = covariance_loss(estimate, labels, covariances, time_weight, model.num_classes)
        if weights.rad > 0:
            terms["rad"] = radius_loss(estimate, labels, prototypes, trace_radius(covariances, config.radius_kappa), time_weight)
    terms["sem"] = terms["ldm"] + weights.proto * terms["proto"] + weights.cov * terms["cov"] + weights.rad * terms["rad"]
    return terms


def pseudo_count(real_batch: int, share: float) -> int:
    """Pseudo samples so that they make up `share` of the classifier's batch."""
    return round(real_batch * share / (1 - share)) if share > 0 else 0


def generate_pseudo(
    model: EndToEndModel,
    count: int,
    settings: EndToEndSettings,
    differentiable: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Fresh pseudo-features (in E's feature space) by a few DDIM steps from N(0, I), labels
    drawn from the pseudo-label distribution."""
    config = settings.e2e
    device = model.pseudo_label_probs.device
    probs = model.pseudo_label_probs if generator is None else model.pseudo_label_probs.to(generator.device)
    labels = torch.multinomial(probs, count, replacement=True, generator=generator).to(device)
    feature_generator = model.feature_generator(settings.schedule, settings.diffusion.resolved_prediction())
    sampler = SamplerSettings("ddim", config.ge_sample_steps, config.ge_eta)
    return feature_generator.sample(labels, sampler, generator, differentiable=differentiable), labels


def pseudo_loss(model: EndToEndModel, features: Tensor, labels: Tensor, settings: EndToEndSettings) -> Tensor:
    """CE of G on pseudo-features, down-weighted or dropped by the AID/OOD filter when it is on.
    The radii are κ·√tr(Σ_y) of the EMA statistics, i.e. `filter.radius: rms` (the config rejects
    `max` for e2e: a moving encoder's largest distance is not tracked)."""
    losses = F.cross_entropy(settings.logits(model, features), labels, reduction="none")
    if not settings.filter.enabled:
        return losses.mean()
    geometry = ClassGeometry(model.stats.means, model.stats.radii(settings.e2e.radius_kappa))
    weights, _ = band_weights(features.detach(), labels, geometry, settings.filter)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


def joint_step(
    model: EndToEndModel,
    optimizers: Optimizers,
    images: Tensor,
    labels: Tensor,
    settings: EndToEndSettings,
    weights: TermWeights,
    generate: bool,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Strategies A and C: L_real + λ_sem·L_LDM^sem (+ γ_ge·L_ge when `generate`), one backward."""
    config = settings.e2e
    features = model.encoder.features(images)
    real = F.cross_entropy(settings.logits(model, features), labels)
    total = real
    logged = {"real": real}
    model.standardizer.update(features.detach())
    if config.clip_follows_encoder:
        model.observe_range(features.detach())
    if weights.diffusion_on:
        diffused = features if config.ldm_to_encoder else features.detach()
        terms = diffusion_terms(model, diffused, labels, settings, weights, generator)
        total = total + weights.sem * terms["sem"]
        logged |= terms
        if config.ldm_to_encoder and config.collapse_guard > 0:
            guard = variance_floor_loss(features, model.feature_floor)
            total = total + config.collapse_guard * guard
            logged["guard"] = guard
    pseudo = None
    if generate and weights.generation_on:
        count = pseudo_count(labels.shape[0], weights.pseudo_share)
        pseudo = generate_pseudo(model, count, settings, config.ge_to_denoiser, generator)
        ge = pseudo_loss(model, *pseudo, settings)
        total = total + weights.ge * ge
        logged["ge"] = ge
    steps_denoiser = weights.diffusion_on or (pseudo is not None and config.ge_to_denoiser)
    optimizers.denoiser.zero_grad(set_to_none=True)
    apply_update(total, optimizers.encoder, *([optimizers.denoiser] if steps_denoiser else []))
    _update_prototypes(model, features, labels, pseudo, config)
    logged["total"] = total
    return {name: value.detach() for name, value in logged.items()}


def denoiser_step(
    model: EndToEndModel,
    optimizer: torch.optim.Optimizer,
    features: Tensor,
    labels: Tensor,
    settings: EndToEndSettings,
    weights: TermWeights,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Strategy B, step A: ε_θ learns L_LDM^sem on the current encoder's features, passed in
    detached: E and G take no part, so nothing of theirs can change."""
    terms = diffusion_terms(model, features.detach(), labels, settings, weights, generator)
    apply_update(terms["sem"], optimizer)
    return {name: value.detach() for name, value in terms.items()}


def encoder_step(
    model: EndToEndModel,
    optimizer: EncoderOptimizer,
    images: Tensor,
    labels: Tensor,
    pseudo: tuple[Tensor, Tensor] | None,
    settings: EndToEndSettings,
    weights: TermWeights,
) -> tuple[dict[str, Tensor], Tensor]:
    """Strategy B, step B: E and G learn from real features and pseudo-features of the frozen ε_θ
    (sampled without a graph). Returns the logs and the batch's features, detached, which the
    denoiser steps that follow reuse instead of running the encoder again."""
    config = settings.e2e
    features = model.encoder.features(images)
    real = F.cross_entropy(settings.logits(model, features), labels)
    total, logged = real, {"real": real}
    if pseudo is not None and weights.ge > 0:
        ge = pseudo_loss(model, *pseudo, settings)
        total = total + weights.ge * ge
        logged["ge"] = ge
    apply_update(total, optimizer)
    features = features.detach()
    model.standardizer.update(features)
    if config.clip_follows_encoder:
        model.observe_range(features)
    _update_prototypes(model, features, labels, pseudo, config)
    logged["total"] = total
    return {name: value.detach() for name, value in logged.items()}, features


def frozen_pseudo(
    model: EndToEndModel, count: int, settings: EndToEndSettings, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pseudo-features from a frozen ε_θ (no graph), for strategy B's step B or its cache."""
    return generate_pseudo(model, count, settings, differentiable=False, generator=generator)


def _update_prototypes(
    model: EndToEndModel, features: Tensor, labels: Tensor, pseudo: tuple[Tensor, Tensor] | None, config: EndToEndConfig
) -> None:
    pseudo_features, pseudo_labels = (pseudo[0].detach(), pseudo[1]) if pseudo is not None else (None, None)
    model.stats.update(features.detach(), labels, pseudo_features, pseudo_labels, config.pseudo_prototype_weight)
