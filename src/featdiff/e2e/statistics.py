"""Running statistics that follow a moving encoder: per-dimension scaling and class prototypes.

In LDMLR the encoder is frozen, so the features' mean and std and each class's mean and
covariance are fixed numbers computed once. Once the encoder trains, all of them drift; these
modules track them with exponential moving averages of batch statistics, kept as buffers so they
travel with the model's state_dict (checkpoints, federated averaging) but never receive gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningStandardizer(nn.Module):
    """Per-dimension z-scoring with EMA statistics of the features it has seen.

    The diffusion model works in this standardised space; because the statistics are buffers
    (no gradient), an encoder cannot lower the diffusion loss by rescaling its features through
    them, only by actually moving the features.
    """

    def __init__(self, feature_dim: int, momentum: float = 0.01, min_std: float = 1e-4) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("var", torch.ones(feature_dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, features: Tensor) -> None:
        """The first batch sets the statistics; later ones move them by `momentum`."""
        if features.shape[0] < 2:
            return
        batch_mean = features.mean(0)
        batch_var = features.var(0, correction=0)
        if not bool(self.initialized):
            self.mean.copy_(batch_mean)
            self.var.copy_(batch_var)
            self.initialized.fill_(True)
            return
        self.mean.lerp_(batch_mean, self.momentum)
        self.var.lerp_(batch_var, self.momentum)

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        """Set the statistics from a whole feature set (e.g. the frozen starting encoder's)."""
        as64 = features.to(torch.float64)
        self.mean.copy_(as64.mean(0))
        self.var.copy_(as64.var(0, correction=0))
        self.initialized.fill_(True)

    @property
    def std(self) -> Tensor:
        return self.var.clamp_min(self.min_std**2).sqrt()

    def encode(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def decode(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean


def class_means_and_covariances(features: Tensor, labels: Tensor, weights: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted per-class mean (C, D), population covariance (C, D, D) and total weight (C,).

    Classes absent from the batch get zero weight (their mean and covariance are zero and must
    not be used). All classes in one pass: no Python loop over classes.
    """
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(features.dtype) * weights[:, None]
    mass = one_hot.sum(0)
    safe = mass.clamp_min(1e-12)
    means = (one_hot.t() @ features) / safe[:, None]
    centred = features - means[labels]
    outer = (centred[:, :, None] * centred[:, None, :]).flatten(1)
    dim = features.shape[1]
    covariances = (one_hot.t() @ outer).view(num_classes, dim, dim) / safe[:, None, None]
    return means, covariances, mass


class ClassStatistics(nn.Module):
    """EMA class prototypes μ_y and covariances Σ_y: μ_y ← (1−λ)·μ_y + λ·(batch mean of class y).

    Batch statistics mix real features (weight 1) with pseudo-features at a lower weight, so the
    targets the semantic losses pull towards come mostly from real data. A class's first batch sets
    its statistics outright; its covariance is only updated from batches with at least two of its
    samples (one sample has no spread).
    """

    def __init__(self, num_classes: int, feature_dim: int, momentum: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.register_buffer("means", torch.zeros(num_classes, feature_dim))
        self.register_buffer("covariances", torch.zeros(num_classes, feature_dim, feature_dim))
        self.register_buffer("seen_mean", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("seen_cov", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(
        self,
        features: Tensor,
        labels: Tensor,
        pseudo_features: Tensor | None = None,
        pseudo_labels: Tensor | None = None,
        pseudo_weight: float = 0.3,
    ) -> None:
        weights = torch.ones(labels.shape[0], dtype=features.dtype, device=features.device)
        if pseudo_features is not None and pseudo_labels is not None and pseudo_weight > 0:
            features = torch.cat([features, pseudo_features.to(features.dtype)])
            labels = torch.cat([labels, pseudo_labels])
            weights = torch.cat([weights, torch.full_like(pseudo_labels, pseudo_weight, dtype=features.dtype)])
        means, covariances, mass = class_means_and_covariances(features, labels, weights, self.num_classes)
        counts = torch.bincount(labels, minlength=self.num_classes)
        self._blend(self.means, means, mass > 0, self.seen_mean)
        self._blend(self.covariances, covariances, counts >= 2, self.seen_cov)

    def _blend(self, state: Tensor, batch: Tensor, present: Tensor, seen: Tensor) -> None:
        rate = torch.where(seen, self.momentum, 1.0).to(state.dtype)
        rate = torch.where(present, rate, torch.zeros_like(rate)).view(-1, *([1] * (state.ndim - 1)))
        state.lerp_(batch, rate.expand_as(state))
        seen |= present

    @torch.no_grad()
    def fit(self, features: Tensor, labels: Tensor) -> None:
        """Exact statistics of a whole feature set."""
        weights = torch.ones(labels.shape[0], dtype=features.dtype, device=features.device)
        means, covariances, mass = class_means_and_covariances(features, labels, weights, self.num_classes)
        counts = torch.bincount(labels, minlength=self.num_classes)
        self.means.copy_(means)
        self.covariances.copy_(covariances)
        self.seen_mean.copy_(mass > 0)
        self.seen_cov.copy_(counts >= 2)

    def radii(self, kappa: float = 1.0) -> Tensor:
        """r_y = κ·√tr(Σ_y): the typical distance of a class's features from its prototype."""
        return kappa * torch.diagonal(self.covariances, dim1=1, dim2=2).sum(-1).clamp_min(0).sqrt()
