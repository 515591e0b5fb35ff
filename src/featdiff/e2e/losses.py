"""Semantic regularisers on the denoiser's one-step estimate z̃₀, and the collapse guard.

All are pure functions of tensors. They act in the diffusion model's (standardised) space, so the
weights η do not depend on the encoder's feature scale. Each takes per-sample weights w(t): a
noisy z_t carries little information about its class, and pulling the estimate made from it onto
the prototype fights the diffusion loss, whose optimum there is the class-conditional mean
estimate, not the prototype itself.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from featdiff.diffusion.process import snr
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.e2e.statistics import class_means_and_covariances

TimestepWeighting = Literal["none", "alpha_bar", "min_snr"]


def semantic_timestep_weight(t: Tensor, schedule: NoiseSchedule, kind: TimestepWeighting) -> Tensor:
    """w(t) in [0, 1]: `alpha_bar` weights by the signal's share ᾱ_t of the variance of z_t;
    `min_snr` by min(SNR(t), 1) (full weight until noise dominates); `none` is 1."""
    if kind == "none":
        return torch.ones(t.shape, device=t.device)
    if kind == "alpha_bar":
        return schedule.alphas_cumprod.to(t.device)[t].float()
    if kind == "min_snr":
        return snr(t, schedule).clamp(max=1.0).float()
    raise ValueError(f"unknown timestep weighting {kind!r}; expected one of {get_args(TimestepWeighting)}")


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def prototype_loss(estimates: Tensor, labels: Tensor, prototypes: Tensor, weights: Tensor) -> Tensor:
    """L_proto = E_w ‖z̃₀ − μ_y‖² (squared Euclidean norm per sample, weighted mean over the batch)."""
    return _weighted_mean((estimates - prototypes[labels]).square().sum(1), weights)


def radius_loss(estimates: Tensor, labels: Tensor, prototypes: Tensor, radii: Tensor, weights: Tensor) -> Tensor:
    """L_rad = E_w (‖z̃₀ − μ_y‖ − r_y)²: keeps estimates on the class's shell instead of its centre."""
    distance = (estimates - prototypes[labels]).square().sum(1).clamp_min(1e-12).sqrt()
    return _weighted_mean((distance - radii[labels]).square(), weights)


def covariance_loss(estimates: Tensor, labels: Tensor, covariances: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    """L_cov = Σ_y ‖Σ̂_y(z̃₀) − Σ_y‖_F over the classes with at least two estimates in the batch.

    Σ̂_y is the w-weighted population covariance of class y's estimates about their own mean.
    """
    _, batch_covariances, _ = class_means_and_covariances(estimates, labels, weights, num_classes)
    present = torch.bincount(labels, minlength=num_classes) >= 2
    difference = (batch_covariances - covariances)[present]
    return torch.linalg.matrix_norm(difference, ord="fro").sum()


def variance_floor_loss(features: Tensor, floor: Tensor) -> Tensor:
    """mean_d relu(floor_d − std_d(z))²: zero while every dimension keeps its spread, growing as the
    encoder shrinks its features (the collapse that lowers L_LDM when its gradient reaches E)."""
    std = features.var(0, correction=0).clamp_min(1e-12).sqrt()
    return torch.relu(floor - std).square().mean()
