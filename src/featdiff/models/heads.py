"""Linear heads on feature vectors: the encoder's own, or one on L2-normalised features.

A head on normalised features (`classifier.normalize`) sees every vector on the sphere of radius
√D, so the norm of a feature, which the encoder makes large for the head classes it memorised,
cannot carry the class prior; only the direction does. It is still one linear map, so it trains
and evaluates like the encoder's `fc`.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class NormalizedLinear(nn.Module):
    """`linear(√D · x / ‖x‖)`: a linear head on features projected onto the sphere of radius √D
    (the norm a standardised D-dimensional vector has on average)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.radius = math.sqrt(linear.in_features)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.radius * F.normalize(features, dim=-1))
