"""Head-to-tail transfer and class-dependent spread: pseudo-features for the unseen tail.

On CIFAR-10-LT the tail classes' test features are far more spread than their training features
and centred away from them (the encoder memorised its few tail images). A generator of training
features reproduces the memorised region. These post-processing steps act on any generator's
output (the diffusion model's or the class Gaussian's), class by class:

- **temperature**: T_c = temperature · (n_max / n_c)^power scales a class's spread (a sampler
  applies it to its noise; the Gaussian to its draws);
- **transfer** (`generation.transfer`): class c borrows from its k nearest more frequent classes S_c
  (nearest by training mean) with strength β_c = β · (1 − n_c / n_max), zero for the head:

      x' = μ'_c + √(1 − β_c) · (x − μ_c) + √β_c · r,   μ'_c = (1 − β_c) · μ_c + β_c · mean_{h∈S_c} μ_h

  where r is a head class's intra-class variation: a draw from N(0, mean_{h∈S_c} Σ_h)
  (`calibration`, the distribution calibration of Yang et al., ICLR 2021) or the residual x_h − μ_h
  of a random real feature of a random class of S_c (`residual`, as RSG transfers head variation,
  Wang et al., CVPR 2021). The mean moves towards the neighbours and the covariance becomes
  (1 − β_c) Σ_c + β_c Σ̄_S: a rare class gets the spread and the direction of its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from featdiff.config import GenerationConfig
from featdiff.errors import UserError
from featdiff.generation.gaussian import resolved_covariance
from featdiff.statistics import SufficientStatistics, class_means

Transfer = Literal["none", "calibration", "residual"]


def class_temperatures(counts: Tensor, temperature: float, power: float) -> Tensor:
    """T_c = temperature · (n_max / n_c)^power (float64, (C,)); a class without records takes the
    rarest present class's temperature."""
    counts = counts.double()
    present = counts > 0
    ratio = torch.where(present, counts.max() / counts.clamp_min(1), (counts.max() / counts[present].min()))
    return temperature * ratio**power


def transfer_strengths(counts: Tensor, strength: float) -> Tensor:
    """β_c = strength · (1 − n_c / n_max): zero for the head class, close to `strength` for the rarest."""
    counts = counts.double()
    return strength * (1.0 - counts / counts.max())


def more_frequent_neighbours(means: Tensor, counts: Tensor, k: int) -> list[Tensor]:
    """For every class, the (up to) k classes with more training records whose means are nearest
    its own (Euclidean); empty for the head class."""
    distances = torch.cdist(means.double(), means.double())
    neighbours = []
    for c in range(len(counts)):
        candidates = torch.nonzero(counts > counts[c]).flatten()
        order = torch.argsort(distances[c, candidates], stable=True)
        neighbours.append(candidates[order[:k]])
    return neighbours


@dataclass(frozen=True)
class HeadToTail:
    """The transfer of `generation.transfer` for one training set: every class's mean, strength
    β_c, neighbours and the source of the borrowed variation."""

    mode: Transfer
    means: Tensor
    strengths: Tensor
    neighbours: list[Tensor]
    neighbour_factors: Tensor | None
    """`calibration`: per class, a Cholesky factor of its neighbours' mean covariance (C, D, D)."""
    residuals: Tensor | None
    """`residual`: every real training feature minus its class mean (N, D)."""
    residual_labels: Tensor | None

    @classmethod
    def fitted(
        cls,
        mode: Transfer,
        features: Tensor,
        labels: Tensor,
        num_classes: int,
        *,
        strength: float,
        neighbours: int,
    ) -> HeadToTail:
        means, counts = class_means(features.double(), labels, num_classes)
        near = more_frequent_neighbours(means, counts, neighbours)
        strengths = transfer_strengths(counts, strength)
        factors = residuals = residual_labels = None
        if mode == "calibration":
            dim = means.shape[1]
            if resolved_covariance("auto", num_classes, dim) != "full":
                raise UserError(
                    f"generation.transfer: calibration borrows per-class covariances, {num_classes}·{dim}² of them here "
                    f"({num_classes * dim * dim * 8 / 1e9:.0f} GB): use transfer: residual at this size"
                )
            _, covariances = SufficientStatistics.of(features, labels, num_classes).means_and_covariances()
            borrowed = torch.stack([covariances[n].mean(0) if len(n) else torch.zeros(dim, dim, dtype=torch.float64) for n in near])
            scale = torch.diagonal(borrowed, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
            factors = torch.linalg.cholesky(borrowed + 1e-6 * scale[:, None, None] * torch.eye(dim, dtype=torch.float64))
        elif mode == "residual":
            residuals = features.double().cpu() - means[labels.cpu()]
            residual_labels = labels.cpu()
        elif mode != "none":
            raise ValueError(f"unknown transfer {mode!r}; expected 'none', 'calibration' or 'residual'")
        return cls(mode, means, strengths, near, factors, residuals, residual_labels)

    def __call__(self, features: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The transferred pseudo-features (float32, on the CPU), drawing r from `generator` class by class."""
        x = features.detach().cpu().double()
        labels = labels.cpu()
        if self.mode == "none":
            return x.float()
        out = x.clone()
        for c in torch.unique(labels).tolist():
            beta, near = float(self.strengths[c]), self.neighbours[c]
            if beta == 0.0 or len(near) == 0:
                continue
            rows = torch.nonzero(labels == c).flatten()
            borrowed_mean = self.means[near].mean(0)
            target = (1.0 - beta) * self.means[c] + beta * borrowed_mean
            variation = self._variation(c, len(rows), generator)
            out[rows] = target + (1.0 - beta) ** 0.5 * (x[rows] - self.means[c]) + beta**0.5 * variation
        return out.float()

    def _variation(self, c: int, count: int, generator: torch.Generator) -> Tensor:
        dim = self.means.shape[1]
        if self.mode == "calibration":
            assert self.neighbour_factors is not None
            return torch.randn(count, dim, generator=generator, dtype=torch.float64) @ self.neighbour_factors[c].T
        assert self.residuals is not None and self.residual_labels is not None
        pool = torch.nonzero(torch.isin(self.residual_labels, self.neighbours[c])).flatten()
        # Every neighbour class equally likely, whatever its size: a random class, then a random record of it.
        owners = self.residual_labels[pool]
        weights = 1.0 / torch.bincount(owners, minlength=len(self.means)).double()[owners]
        picks = pool[torch.multinomial(weights, count, replacement=True, generator=generator)]
        return self.residuals[picks]


def fitted_transfer(config: GenerationConfig, features: Tensor, labels: Tensor, num_classes: int) -> HeadToTail | None:
    """`config.transfer` fitted to the real (`features`, `labels`), or None for `none`. A fill fits it
    once and applies it to each chunk it draws: the fit (class statistics, neighbours, factors)
    depends only on the real features, so refitting per chunk would only repeat it."""
    if config.transfer == "none":
        return None
    return HeadToTail.fitted(
        config.transfer, features, labels, num_classes, strength=config.transfer_strength, neighbours=config.transfer_neighbours
    )
