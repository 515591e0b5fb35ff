"""Maps between encoder features and the space the diffusion model works in.

A diffusion model assumes data of roughly unit scale: its noise schedule ends at ᾱ_T ≈ 0 only
relative to that scale, and any clipping of x̂0 during sampling has to match the data's range.

`UnitIntervalMap` is LDMLR's mapping, inherited from the lucidrains wrapper's auto-normalisation:
x -> 2x - 1, as if features lay in [0, 1], with x̂0 clamped to [-1, 1] at every sampling step.
ResNet features are post-ReLU averages, non-negative and unbounded (on CIFAR-100 a third of the
entries exceed 1, with per-dimension maxima around 5-7), so this mapping plus clipping truncates
every generated feature to [0, 1]: the pseudo-features miss exactly the large activations that
carry much of the class evidence. It is kept to reproduce LDMLR faithfully.

`Standardizer` is featdiff's default: per-dimension z-scoring fit on the training features, with
no clipping needed because the model sees (approximately) unit-variance data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-dimension affine map to zero mean and unit variance."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, features: Tensor, min_std: float = 1e-6) -> Standardizer:
        """Statistics are computed in float64 (sums over ~10^4-10^6 rows) and stored in the
        features' dtype. The std is the population std, floored because ReLU features can have
        dimensions that are constant (dead) on the training set."""
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"features must be (N, D) with N >= 1, got {tuple(features.shape)}")
        as64 = features.detach().to(torch.float64)
        mean = as64.mean(0)
        std = as64.std(0, correction=0).clamp(min=min_std)
        return cls(mean=mean.to(features.dtype), std=std.to(features.dtype))

    def encode(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def decode(self, z: Tensor) -> Tensor:
        return z * self.std.to(z) + self.mean.to(z)

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.detach().clone(), "std": self.std.detach().clone()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> Standardizer:
        if set(state) != {"mean", "std"}:
            raise ValueError(f"expected keys {{'mean', 'std'}}, got {sorted(state)}")
        mean, std = state["mean"], state["std"]
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be equal 1-D shapes, got {mean.shape}, {std.shape}")
        if not bool((std > 0).all()):
            raise ValueError("std must be positive")
        return cls(mean=mean.clone(), std=std.clone())


@dataclass(frozen=True)
class UnitIntervalMap:
    """LDMLR's x -> 2x - 1; stateless, with the same interface as `Standardizer` so that the two
    are interchangeable in configs and checkpoints."""

    @classmethod
    def fit(cls, features: Tensor) -> UnitIntervalMap:
        return cls()

    def encode(self, x: Tensor) -> Tensor:
        return 2 * x - 1

    def decode(self, z: Tensor) -> Tensor:
        return (z + 1) / 2

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> UnitIntervalMap:
        if state:
            raise ValueError(f"UnitIntervalMap has no state, got keys {sorted(state)}")
        return cls()
