"""Semantic regularisers on the denoiser's one-step estimate z̃₀, and the collapse guard.

All are pure functions of tensors. They act in the diffusion model's (standardised) space and are
divided by the feature dimension D (like L_LDM, a mean over dimensions), so the weights η depend
neither on the encoder's feature scale nor on D. Each takes per-sample weights w(t): a noisy z_t
carries little information about its class, and the estimate made from it,
z̃₀ = z₀ + √((1−ᾱ)/ᾱ)·(ε − ε̂), amplifies the noise-prediction error without bound as ᾱ → 0; a
weight of zero leaves a sample out (see `semantic_timestep_weight`).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from featdiff.diffusion.process import snr
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.statistics import class_means_and_covariances

TimestepWeighting = Literal["none", "alpha_bar", "min_snr"]


def semantic_timestep_weight(t: Tensor, schedule: NoiseSchedule, kind: TimestepWeighting, max_t: int | None = None) -> Tensor:
    """w(t) in [0, 1]: `alpha_bar` weights by the signal's share ᾱ_t of the variance of z_t;
    `min_snr` by min(SNR(t), 1) (full weight until noise dominates); `none` is 1. Timesteps above
    `max_t` get weight 0: there z̃₀ is mostly amplified noise."""
    if kind == "none":
        weight = torch.ones(t.shape, device=t.device)
    elif kind == "alpha_bar":
        weight = schedule.alphas_cumprod.to(t.device)[t].float()
    elif kind == "min_snr":
        weight = snr(t, schedule).clamp(max=1.0).float()
    else:
        raise ValueError(f"unknown timestep weighting {kind!r}; expected one of {get_args(TimestepWeighting)}")
    return weight if max_t is None else weight * (t <= max_t)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def prototype_loss(estimates: Tensor, labels: Tensor, prototypes: Tensor, weights: Tensor) -> Tensor:
    """L_proto = E_w ‖z̃₀ − μ_y‖² / D (weighted mean over the batch)."""
    return _weighted_mean((estimates - prototypes[labels]).square().mean(1), weights)


def radius_loss(estimates: Tensor, labels: Tensor, prototypes: Tensor, radii: Tensor, weights: Tensor) -> Tensor:
    """L_rad = E_w (‖z̃₀ − μ_y‖ − r_y)² / D: keeps estimates on the class's shell, not its centre."""
    distance = (estimates - prototypes[labels]).square().sum(1).clamp_min(1e-12).sqrt()
    return _weighted_mean((distance - radii[labels]).square(), weights) / estimates.shape[1]


def covariance_loss(estimates: Tensor, labels: Tensor, covariances: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    """L_cov = Σ_y ‖Σ̂_y(z̃₀) − Σ_y‖_F / D over the classes with at least two estimates of nonzero
    weight in the batch. Σ̂_y is the w-weighted population covariance of class y's estimates about
    their own mean."""
    _, batch_covariances, _ = class_means_and_covariances(estimates, labels, weights, num_classes)
    present = torch.bincount(labels[weights > 0], minlength=num_classes) >= 2
    difference = (batch_covariances - covariances)[present]
    return torch.linalg.matrix_norm(difference, ord="fro").sum() / estimates.shape[1]


def variance_floor_loss(features: Tensor, floor: Tensor) -> Tensor:
    """mean_d relu(floor_d − std_d(z))²: zero while every dimension keeps its spread, growing as the
    encoder shrinks its features (the collapse that lowers L_LDM when its gradient reaches E)."""
    std = features.var(0, correction=0).clamp_min(1e-12).sqrt()
    return torch.relu(floor - std).square().mean()
