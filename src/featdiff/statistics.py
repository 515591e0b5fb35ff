"""Class statistics of feature vectors: means, covariances, radii, and where a sample sits.

The one home of these numbers for every consumer: the AID/OOD filter (prototype and radius of
each class), end-to-end training (EMA prototypes and covariances of a moving encoder), the
diagnostics (Fréchet distances, spreads), the class-Gaussian generator and the federation's
sufficient statistics (count, sum and sum of outer products per class, which add over chunks
and over clients). All are computed for every class in one pass, without a Python loop over
samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from featdiff.diffusion.scaling import Standardizer

ID, AID, OOD = 0, 1, 2
BAND_NAMES = ("id", "aid", "ood")
Radius = Literal["max", "rms"]


def class_means(features: Tensor, labels: Tensor, num_classes: int, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Weighted per-class mean (C, D) and total weight (C,); a class without weight has mean 0."""
    if weights is None:
        weights = torch.ones(labels.shape[0], dtype=features.dtype, device=features.device)
    mass = torch.zeros(num_classes, dtype=features.dtype, device=features.device).index_add_(0, labels, weights)
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features * weights[:, None])
    return sums / mass.clamp_min(1e-12)[:, None], mass


def class_means_and_covariances(features: Tensor, labels: Tensor, weights: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted per-class mean (C, D), population covariance (C, D, D) and total weight (C,).

    Classes absent from the batch get zero weight (their mean and covariance are zero and must
    not be used).
    """
    means, mass = class_means(features, labels, num_classes, weights)
    centred = (features - means[labels]) * weights.sqrt()[:, None]
    dim = features.shape[1]
    outer = (centred[:, :, None] * centred[:, None, :]).flatten(1)
    sums = torch.zeros(num_classes, dim * dim, dtype=features.dtype, device=features.device).index_add_(0, labels, outer)
    return means, sums.view(num_classes, dim, dim) / mass.clamp_min(1e-12)[:, None, None], mass


def trace_radius(covariances: Tensor, kappa: float = 1.0) -> Tensor:
    """κ·√tr(Σ_y): the RMS distance of a class's features from its prototype."""
    return kappa * torch.diagonal(covariances, dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt()


@dataclass(frozen=True)
class ClassGeometry:
    """Per-class prototype μ_y (C, D) and radius r_y (C,) of the real features."""

    prototypes: Tensor
    radii: Tensor

    @classmethod
    def of(cls, features: Tensor, labels: Tensor, num_classes: int, radius: Radius = "max") -> ClassGeometry:
        """r_y is the largest real distance to μ_y (`max`, DiffuLT) or the RMS distance (`rms`)."""
        prototypes, mass = class_means(features, labels, num_classes)
        distances = (features - prototypes[labels]).norm(dim=1)
        if radius == "max":
            radii = torch.zeros(num_classes, dtype=features.dtype).scatter_reduce_(0, labels, distances, reduce="amax", include_self=False)
        elif radius == "rms":
            squares = torch.zeros(num_classes, dtype=features.dtype).index_add_(0, labels, distances.square())
            radii = (squares / mass.clamp_min(1)).sqrt()
        else:
            raise ValueError(f"unknown radius {radius!r}; expected 'max' or 'rms'")
        return cls(prototypes, radii)


def distance_ratios(features: Tensor, labels: Tensor, geometry: ClassGeometry) -> Tensor:
    """‖z − μ_y‖ / r_y per sample."""
    distances = (features - geometry.prototypes[labels].to(features)).norm(dim=1)
    return distances / geometry.radii[labels].to(features).clamp_min(1e-12)


def bands(ratios: Tensor, id_edge: float, aid_edge: float) -> Tensor:
    """0 (ID) for ratio ≤ id_edge, 1 (AID) for ≤ aid_edge, else 2 (OOD)."""
    return (ratios > id_edge).long() + (ratios > aid_edge).long()


def band_fractions(band: Tensor) -> dict[str, float]:
    counts = torch.bincount(band, minlength=3).double()
    total = max(float(counts.sum()), 1.0)
    return {name: float(count) / total for name, count in zip(BAND_NAMES, counts, strict=True)}


class ClassStatistics(nn.Module):
    """EMA class prototypes μ_y and covariances Σ_y of a moving encoder's features:
    μ_y ← (1−λ)·μ_y + λ·(batch mean of class y), kept as buffers (they travel with a state_dict).

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
        return trace_radius(self.covariances, kappa)


@dataclass(frozen=True)
class SufficientStatistics:
    counts: Tensor
    """(C,) records per class."""
    sums: Tensor
    """(C, D) per-class sums of features."""
    outer: Tensor
    """(C, D, D) per-class sums of x·xᵀ."""

    @classmethod
    def of(cls, features: Tensor, labels: Tensor, num_classes: int) -> SufficientStatistics:
        """The statistics of one set of features (float64): one D×D product per class present,
        never an N×D×D tensor, so any N fits; sum the statistics of chunks to stream a large set."""
        x = features.detach().to(torch.float64)
        labels = labels.to(x.device)
        dim = x.shape[1]
        counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device).index_add_(0, labels, x)
        outer = torch.zeros(num_classes, dim, dim, dtype=torch.float64, device=x.device)
        order = torch.argsort(labels, stable=True)
        present = torch.nonzero(counts).flatten().tolist()
        for c, rows in zip(present, x[order].split(counts[counts > 0].long().tolist()), strict=True):
            outer[c] = rows.T @ rows
        return cls(counts, sums, outer)

    def add_(self, features: Tensor, labels: Tensor) -> SufficientStatistics:
        """Accumulate another chunk of records in place (a stream of chunks never holds more than
        one chunk and one set of statistics)."""
        chunk = SufficientStatistics.of(features, labels, len(self.counts))
        self.counts.add_(chunk.counts)
        self.sums.add_(chunk.sums)
        self.outer.add_(chunk.outer)
        return self

    @classmethod
    def zeros(cls, num_classes: int, dim: int) -> SufficientStatistics:
        return cls(
            torch.zeros(num_classes, dtype=torch.float64),
            torch.zeros(num_classes, dim, dtype=torch.float64),
            torch.zeros(num_classes, dim, dim, dtype=torch.float64),
        )

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        return SufficientStatistics(self.counts + other.counts, self.sums + other.sums, self.outer + other.outer)

    @staticmethod
    def total(parts: list[SufficientStatistics]) -> SufficientStatistics:
        result = parts[0]
        for part in parts[1:]:
            result = result + part
        return result

    def means_and_covariances(self) -> tuple[Tensor, Tensor]:
        """Per-class mean (C, D) and population covariance (C, D, D); zeros where a class is absent."""
        mass = self.counts.clamp_min(1.0)
        means = self.sums / mass[:, None]
        covariances = self.outer / mass[:, None, None] - means[:, :, None] * means[:, None, :]
        return means, covariances

    def standardizer(self, min_std: float = 1e-6) -> Standardizer:
        """The per-dimension scaling of the pooled features (what `Standardizer.fit` computes on them)."""
        total = self.counts.sum()
        mean = self.sums.sum(0) / total
        second = torch.diagonal(self.outer.sum(0)) / total
        scaler = Standardizer(self.sums.shape[1], min_std=min_std)
        scaler.mean.copy_(mean)
        scaler.std.copy_((second - mean.square()).clamp_min(0).sqrt().clamp(min=min_std))
        return scaler

    def as_dict(self) -> dict[str, Tensor]:
        return {"counts": self.counts, "sums": self.sums, "outer": self.outer}

    @classmethod
    def from_dict(cls, tensors: dict[str, Tensor]) -> SufficientStatistics:
        return cls(tensors["counts"].to(torch.float64), tensors["sums"].to(torch.float64), tensors["outer"].to(torch.float64))
