"""The class-conditional Gaussian generator: the cheapest generator a diffusion model must beat.

Each class is N(μ_c, Σ_c) with its training mean and a covariance shrunk towards the pooled
within-class covariance, Σ'_c = (1 − λ)·Σ_c + λ·Σ_pool (λ = `generation.shrinkage`, chosen on the
validation part); where C per-class D×D covariances do not fit in memory (`generation.covariance`),
every class takes Σ_pool, computed in chunks. A tail class of five records has a rank-four covariance in 64 dimensions;
shrinking borrows the shape of the spread from the classes that have data, and a class with
fewer than two records takes Σ_pool outright. It is fitted from sufficient statistics (count,
sum, sum of outer products per class), so the same generator is built from a federation's
aggregated statistics, and sampled in float64 through a Cholesky factor per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from featdiff.statistics import SufficientStatistics

JITTER = 1e-6
"""Added to the diagonal, times the mean variance, so that every factor exists."""


def shrink(counts: Tensor, covariances: Tensor, shrinkage: float) -> Tensor:
    """(1 − λ)·Σ_c + λ·Σ_pool per class (float64); classes with fewer than two records get Σ_pool,
    the count-weighted mean of the classes' own (population) covariances."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    counts, covariances = counts.double(), covariances.double()
    pooled = (covariances * counts[:, None, None]).sum(0) / counts.sum()
    shrunk = (1.0 - shrinkage) * covariances + shrinkage * pooled
    return torch.where((counts >= 2)[:, None, None], shrunk, pooled)


def shrunk_covariances(statistics: SufficientStatistics, shrinkage: float) -> tuple[Tensor, Tensor]:
    """Class means (C, D) and shrunk covariances (C, D, D) of sufficient statistics, float64."""
    means, covariances = statistics.means_and_covariances()
    return means, shrink(statistics.counts, covariances, shrinkage)


def nearest_psd(covariances: Tensor) -> Tensor:
    """Each symmetrised matrix with its negative eigenvalues set to zero (the nearest positive
    semi-definite matrix in Frobenius norm)."""
    symmetric = (covariances + covariances.transpose(-1, -2)) / 2
    values, vectors = torch.linalg.eigh(symmetric)
    return vectors @ torch.diag_embed(values.clamp_min(0)) @ vectors.transpose(-1, -2)


FULL_COVARIANCE_BYTES = 2e9
"""`generation.covariance: auto` keeps per-class covariances while C·D² float64 fit in this; above
it (ImageNet-LT at D = 2048 would need 34 GB) the classes share one within-class covariance."""


def resolved_covariance(covariance: str, num_classes: int, dim: int) -> str:
    """`full` or `pooled`: what `generation.covariance` means for C classes in D dimensions."""
    if covariance == "auto":
        return "full" if num_classes * dim * dim * 8 <= FULL_COVARIANCE_BYTES else "pooled"
    return covariance


def pooled_moments(features: Tensor, labels: Tensor, num_classes: int, chunk: int = 16_384) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class counts (C,) and means (C, D), and the within-class covariance pooled over every
    class (D, D), float64, in chunks: memory C·D + D², whatever C and N."""
    dim = features.shape[1]
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    sums = torch.zeros(num_classes, dim, dtype=torch.float64)
    for rows in torch.arange(len(labels)).split(chunk):
        sums.index_add_(0, labels[rows].cpu(), features[rows].cpu().double())
    means = sums / counts.clamp_min(1)[:, None]
    within = torch.zeros(dim, dim, dtype=torch.float64)
    for rows in torch.arange(len(labels)).split(chunk):
        centred = features[rows].cpu().double() - means[labels[rows].cpu()]
        within += centred.T @ centred
    return counts, means, within / counts.sum()


@dataclass(frozen=True)
class ClassGaussian:
    """N(μ_c, Σ_c) per class, sampled through the lower Cholesky factors L_c (Σ_c = L_c L_cᵀ): one
    per class (C, D, D), or one the classes share (1, D, D)."""

    means: Tensor
    factors: Tensor

    @classmethod
    def fitted_to(cls, features: Tensor, labels: Tensor, num_classes: int, *, shrinkage: float, covariance: str = "auto") -> ClassGaussian:
        """The class Gaussian of (features, labels): per-class covariances shrunk towards the pooled
        one (`full`), or the pooled within-class covariance for every class (`pooled`, for C·D² too
        large to hold; `auto` picks by size)."""
        if resolved_covariance(covariance, num_classes, features.shape[1]) == "full":
            return cls.fitted(SufficientStatistics.of(features, labels, num_classes), shrinkage)
        _, means, within = pooled_moments(features, labels, num_classes)
        return cls.of(means, within[None])

    @classmethod
    def fitted(cls, statistics: SufficientStatistics, shrinkage: float, *, project: bool = False) -> ClassGaussian:
        """From (count, sum, sum of outer products) per class; `project` first makes every
        covariance positive semi-definite (noisy, released statistics need it)."""
        means, covariances = shrunk_covariances(statistics, shrinkage)
        if project:
            covariances = nearest_psd(covariances)
        return cls.of(means, covariances)

    @classmethod
    def of(cls, means: Tensor, covariances: Tensor) -> ClassGaussian:
        dim = means.shape[1]
        scale = torch.diagonal(covariances, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        jittered = covariances + JITTER * scale[:, None, None] * torch.eye(dim, dtype=covariances.dtype)
        return cls(means, torch.linalg.cholesky(jittered))

    @property
    def covariances(self) -> Tensor:
        return self.factors @ self.factors.transpose(-1, -2)

    def sample(self, labels: Tensor, generator: torch.Generator, temperature: Tensor | None = None) -> Tensor:
        """One float32 feature per label: μ_y + T_y·L_y z, z ~ N(0, I), T the per-sample
        temperature (1 by default), drawn in the order of `labels`."""
        labels = labels.cpu()
        z = torch.randn(len(labels), self.means.shape[1], generator=generator, dtype=torch.float64)
        draws = torch.empty_like(z)
        shared = len(self.factors) == 1
        for c in torch.unique(labels).tolist():  # one (n_c, D) product per class, never an N×D×D tensor
            rows = labels == c
            draws[rows] = z[rows] @ self.factors[0 if shared else c].T
        if temperature is not None:
            draws = draws * temperature.cpu().double()[:, None]
        return (self.means[labels] + draws).float()

    def generate(self, counts: Tensor, generator: torch.Generator, *, temperatures: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """counts[c] draws of every class c, class c's spread scaled by temperatures[c]; (features, labels)."""
        labels = torch.repeat_interleave(torch.arange(counts.numel()), counts.cpu())
        return self.sample(labels, generator, None if temperatures is None else temperatures[labels]), labels

    def tensors(self) -> dict[str, Tensor]:
        return {"means": self.means, "factors": self.factors}
