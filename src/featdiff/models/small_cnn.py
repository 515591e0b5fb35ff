"""A small CNN for 8×8 digit images, the encoder of the fast end-to-end pipeline.

The digits pipeline exists so every stage (encoder, diffusion, classifier, evaluation) can run in
seconds on a CPU; it only needs the same interface as ResNet-32, not its depth.
"""

from __future__ import annotations

import torch
from torch import nn

from featdiff.seeding import he_normal_


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """Three 3×3 conv-BN-ReLU layers (one 2×2 max-pool), global average pool, linear head.

    The pooled feature is non-negative, as ResNet-32's is, so feature-space methods see the same
    kind of distribution at small scale.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, 32),
            _conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            _conv_bn_relu(64, feature_dim),
        )
        self.feature_dim: int = feature_dim
        self.fc = nn.Linear(feature_dim, num_classes)
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """He-normal weights (drawn from `generator`, or the global one at construction)."""
        he_normal_(self, generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → (B, feature_dim)."""
        return self.body(x).mean(dim=(2, 3))

    def features_ldmlr(self, x: torch.Tensor) -> torch.Tensor:
        """Same as `features`: the dropped stem ReLU is a ResNet-32 quirk with no analogue here."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
