"""Maps between encoder features and the space the diffusion model works in.

A diffusion model assumes data of roughly unit scale: its noise schedule ends at ᾱ_T ≈ 0 only
relative to that scale, and any clipping of x̂0 during sampling has to match the data's range.

`UnitIntervalMap` is LDMLR's mapping, inherited from the lucidrains wrapper's auto-normalisation:
x -> 2x - 1, as if features lay in [0, 1], with x̂0 clamped to [-1, 1] at every sampling step.
ResNet features are post-ReLU averages, non-negative and unbounded (on CIFAR-100 a third of the
entries exceed 1, with per-dimension maxima around 5-7), so this mapping plus clipping truncates
every generated feature to [0, 1]: the pseudo-features miss exactly the large activations that
carry much of the class evidence. It is kept to reproduce LDMLR faithfully.

`Standardizer` is featdiff's default: per-dimension z-scoring with the training features'
statistics, so the model sees (approximately) unit-variance data. `RunningStandardizer` is the
same map with exponential-moving-average statistics, for an encoder that moves during training
(end-to-end training); both are modules whose statistics are buffers, so they travel with a
state_dict (checkpoints, federated averaging) and never receive gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Standardizer(nn.Module):
    """Per-dimension affine map to zero mean and unit variance: encode (x − μ)/σ, decode z·σ + μ."""

    def __init__(self, feature_dim: int, min_std: float = 1e-6) -> None:
        super().__init__()
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    @classmethod
    def fitted(cls, features: Tensor, min_std: float = 1e-6) -> Standardizer:
        scaler = cls(features.shape[-1], min_std=min_std)
        scaler.fit(features)
        return scaler

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        """Statistics of a whole feature set, computed in float64 (sums over ~10^4-10^6 rows). The
        std is the population std, floored because ReLU features can have dimensions that are
        constant (dead) on the training set."""
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"features must be (N, D) with N >= 1, got {tuple(features.shape)}")
        as64 = features.detach().to(torch.float64)
        self.mean.copy_(as64.mean(0))
        self.std.copy_(as64.std(0, correction=0).clamp(min=self.min_std))

    def encode(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def decode(self, z: Tensor) -> Tensor:
        return z * self.std.to(z) + self.mean.to(z)


class RunningStandardizer(Standardizer):
    """A `Standardizer` whose statistics follow the features it is shown, by EMA of batch moments.

    The diffusion model works in this standardised space; because the statistics are buffers, an
    encoder cannot lower the diffusion loss by rescaling its features through them, only by
    actually moving the features.
    """

    def __init__(self, feature_dim: int, momentum: float = 0.01, min_std: float = 1e-4) -> None:
        super().__init__(feature_dim, min_std=min_std)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        super().fit(features)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, features: Tensor) -> None:
        """The first batch sets the statistics; later ones move mean and variance by `momentum`."""
        if features.shape[0] < 2:
            return
        batch_mean = features.mean(0)
        batch_var = features.var(0, correction=0)
        if not bool(self.initialized):
            self.mean.copy_(batch_mean)
            self.std.copy_(batch_var.clamp_min(self.min_std**2).sqrt())
            self.initialized.fill_(True)
            return
        variance = self.std.square().lerp_(batch_var, self.momentum)
        self.mean.lerp_(batch_mean, self.momentum)
        self.std.copy_(variance.clamp_min(self.min_std**2).sqrt())


class UnitIntervalMap(nn.Module):
    """LDMLR's x -> 2x - 1; stateless, with the same interface as `Standardizer` so that the two
    are interchangeable in configs and checkpoints."""

    def encode(self, x: Tensor) -> Tensor:
        return 2 * x - 1

    def decode(self, z: Tensor) -> Tensor:
        return (z + 1) / 2


Scaler = Standardizer | UnitIntervalMap
