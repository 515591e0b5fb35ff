"""Per-class sufficient statistics (count, sum, sum of outer products): what a client sends about
its features instead of the features. Statistics add, so the server's sum over clients equals
the statistics of the pooled features, and the feature scaling and per-class Fréchet distances
come from the federation as a whole, never from one client's local view.

Kept in float64: sums over 10^4 records of 64-dimensional features lose digits in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from featdiff.diffusion.scaling import Standardizer


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
        x = features.detach().to(torch.float64)
        dim = x.shape[1]
        counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
        sums = torch.zeros(num_classes, dim, dtype=torch.float64).index_add_(0, labels, x)
        outer = torch.zeros(num_classes, dim * dim, dtype=torch.float64).index_add_(0, labels, (x[:, :, None] * x[:, None, :]).flatten(1))
        return cls(counts, sums, outer.view(num_classes, dim, dim))

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
