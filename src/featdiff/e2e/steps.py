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

Strategy A calls `joint_step`; strategy B alternates `encoder_step` (ε_θ frozen) and
`denoiser_step` on that batch's detached features (E, G frozen), sharing one encoder forward;
strategy C calls `joint_step` with the terms its phase allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from featdiff.config import EndToEndConfig, PseudoFilterConfig
from featdiff.diffusion.process import predict_x0_from_eps, q_sample
from featdiff.diffusion.sampling import ddim_sample
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.e2e.losses import covariance_loss, prototype_loss, radius_loss, semantic_timestep_weight, variance_floor_loss
from featdiff.e2e.model import EndToEndModel
from featdiff.methods.pseudo_filter import ClassGeometry, band_weights
from featdiff.training.finetune import EncoderOptimizer


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
    schedule: NoiseSchedule,
    config: EndToEndConfig,
    weights: TermWeights,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """L_LDM on standardised features, and the semantic terms on the one-step estimate z̃₀."""
    scaled = model.standardizer.encode(features)
    t = torch.randint(0, schedule.num_steps, (scaled.shape[0],), generator=generator, device=scaled.device)
    noise = torch.randn(scaled.shape, generator=generator, dtype=scaled.dtype, device=scaled.device)
    noisy = q_sample(scaled, t, noise, schedule)
    predicted = model.denoiser(noisy, t, labels)
    terms = {"ldm": (predicted - noise).square().mean()}
    estimate = predict_x0_from_eps(noisy, t, predicted, schedule)
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
            radii = config.radius_kappa * torch.diagonal(covariances, dim1=1, dim2=2).sum(-1).clamp_min(0).sqrt()
            terms["rad"] = radius_loss(estimate, labels, prototypes, radii, time_weight)
    terms["sem"] = terms["ldm"] + weights.proto * terms["proto"] + weights.cov * terms["cov"] + weights.rad * terms["rad"]
    return terms


def pseudo_count(real_batch: int, share: float) -> int:
    """Pseudo samples so that they make up `share` of the classifier's batch."""
    return round(real_batch * share / (1 - share)) if share > 0 else 0


def generate_pseudo(
    model: EndToEndModel,
    count: int,
    schedule: NoiseSchedule,
    config: EndToEndConfig,
    differentiable: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Fresh pseudo-features (in E's feature space) by a few DDIM steps from N(0, I)."""
    device = model.pseudo_label_probs.device
    probs = model.pseudo_label_probs if generator is None else model.pseudo_label_probs.to(generator.device)
    labels = torch.multinomial(probs, count, replacement=True, generator=generator).to(device)
    scaled = ddim_sample(
        model.denoiser,
        labels,
        model.standardizer.mean.numel(),
        schedule,
        steps=config.ge_sample_steps,
        eta=config.ge_eta,
        clip=(model.clip_low, model.clip_high),
        generator=generator,
        differentiable=differentiable,
    )
    return model.standardizer.decode(scaled), labels


def pseudo_loss(
    model: EndToEndModel, features: Tensor, labels: Tensor, config: EndToEndConfig, filter_config: PseudoFilterConfig
) -> Tensor:
    """CE of G on pseudo-features, down-weighted or dropped by the AID/OOD filter when it is on."""
    losses = F.cross_entropy(model.classifier(features), labels, reduction="none")
    if not filter_config.enabled:
        return losses.mean()
    geometry = ClassGeometry(model.stats.means, model.stats.radii(config.radius_kappa))
    weights, _ = band_weights(features.detach(), labels, geometry, filter_config)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


def joint_step(
    model: EndToEndModel,
    optimizers: Optimizers,
    images: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    config: EndToEndConfig,
    filter_config: PseudoFilterConfig,
    weights: TermWeights,
    generate: bool,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Strategies A and C: L_real + λ_sem·L_LDM^sem (+ γ_ge·L_ge when `generate`), one backward."""
    features = model.encoder.features(images)
    real = F.cross_entropy(model.classifier(features), labels)
    total = real
    logged = {"real": real}
    model.standardizer.update(features.detach())
    if config.clip_follows_encoder:
        model.observe_range(features.detach())
    if weights.diffusion_on:
        diffused = features if config.ldm_to_encoder else features.detach()
        terms = diffusion_terms(model, diffused, labels, schedule, config, weights, generator)
        total = total + weights.sem * terms["sem"]
        logged |= terms
        if config.ldm_to_encoder and config.collapse_guard > 0:
            guard = variance_floor_loss(features, model.feature_floor)
            total = total + config.collapse_guard * guard
            logged["guard"] = guard
    pseudo = None
    if generate and weights.generation_on:
        count = pseudo_count(labels.shape[0], weights.pseudo_share)
        pseudo = generate_pseudo(model, count, schedule, config, config.ge_to_denoiser, generator)
        ge = pseudo_loss(model, *pseudo, config, filter_config)
        total = total + weights.ge * ge
        logged["ge"] = ge
    optimizers.encoder.zero_grad(set_to_none=True)
    optimizers.denoiser.zero_grad(set_to_none=True)
    total.backward()
    optimizers.encoder.step()
    if weights.diffusion_on or (pseudo is not None and config.ge_to_denoiser):
        optimizers.denoiser.step()
    _update_prototypes(model, features, labels, pseudo, config)
    logged["total"] = total
    return {name: float(value.detach()) for name, value in logged.items()}


def denoiser_step(
    model: EndToEndModel,
    optimizer: torch.optim.Optimizer,
    features: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    config: EndToEndConfig,
    weights: TermWeights,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Strategy B, step A: ε_θ learns L_LDM^sem on the current encoder's features, passed in
    detached: E and G take no part, so nothing of theirs can change."""
    terms = diffusion_terms(model, features.detach(), labels, schedule, config, weights, generator)
    optimizer.zero_grad(set_to_none=True)
    terms["sem"].backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in terms.items()}


def encoder_step(
    model: EndToEndModel,
    optimizer: EncoderOptimizer,
    images: Tensor,
    labels: Tensor,
    pseudo: tuple[Tensor, Tensor] | None,
    config: EndToEndConfig,
    filter_config: PseudoFilterConfig,
    weights: TermWeights,
) -> tuple[dict[str, float], Tensor]:
    """Strategy B, step B: E and G learn from real features and pseudo-features of the frozen ε_θ
    (sampled without a graph). Returns the logs and the batch's features, detached, which the
    denoiser steps that follow reuse instead of running the encoder again."""
    features = model.encoder.features(images)
    real = F.cross_entropy(model.classifier(features), labels)
    total, logged = real, {"real": real}
    if pseudo is not None and weights.ge > 0:
        ge = pseudo_loss(model, *pseudo, config, filter_config)
        total = total + weights.ge * ge
        logged["ge"] = ge
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    features = features.detach()
    model.standardizer.update(features)
    if config.clip_follows_encoder:
        model.observe_range(features)
    _update_prototypes(model, features, labels, pseudo, config)
    logged["total"] = total
    return {name: float(value.detach()) for name, value in logged.items()}, features


def frozen_pseudo(
    model: EndToEndModel, count: int, schedule: NoiseSchedule, config: EndToEndConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pseudo-features from a frozen ε_θ (no graph), for strategy B's step B or its cache."""
    return generate_pseudo(model, count, schedule, config, differentiable=False, generator=generator)


def _update_prototypes(
    model: EndToEndModel, features: Tensor, labels: Tensor, pseudo: tuple[Tensor, Tensor] | None, config: EndToEndConfig
) -> None:
    pseudo_features, pseudo_labels = (pseudo[0].detach(), pseudo[1]) if pseudo is not None else (None, None)
    model.stats.update(features.detach(), labels, pseudo_features, pseudo_labels, config.pseudo_prototype_weight)
