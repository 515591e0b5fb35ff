"""ResNet-32 for CIFAR, exactly as LDAM-DRW / MAPLS / LDMLR build it.

The architecture and the parameter names are fixed by the four encoders LDMLR shipped: loading
them with `strict=True` and reproducing their published test accuracy is what makes our baselines
comparable to the paper point for point, so nothing here may drift from that network (option-A
shortcuts, no biases in convolutions, 64-d pooled feature, `fc` as the last layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featdiff.seeding import he_normal_


def option_a_shortcut(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Identity shortcut for a block that halves resolution and widens: subsample, zero-pad.

    LDAM's option A pads the same number of zero channels before and after the input channels
    (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))`); the shipped weights
    were trained with the real channels in the middle, so the placement matters. It has no
    parameters, which is why the shipped state dicts hold no `shortcut` keys.
    """
    extra = out_channels - x.shape[1]
    before = extra // 2
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, before, extra - before))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BN, plus the option-A shortcut when shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.out_channels = out_channels
        self.reshapes = stride != 1 or in_channels != out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = option_a_shortcut(x, self.out_channels) if self.reshapes else x
        return F.relu(out + shortcut)


class ResNetCifar(nn.Module):
    """CIFAR ResNet (6n+2 layers): 16-wide stem, three stages 16/32/64, global average pool.

    The stem ReLU is applied functionally (as in the original), which is why LDMLR's
    `nn.Sequential(children[:-1])` feature extractor silently lost it; `features_ldmlr`
    reproduces that path on purpose, `features` is the network as trained.
    """

    def __init__(self, num_classes: int, blocks_per_stage: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.feature_dim: int = 64
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """He-normal weights (drawn from `generator`, or the global one at construction)."""
        he_normal_(self, generator)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        first = BasicBlock(in_channels, out_channels, stride)
        rest = [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(first, *rest)

    def _trunk(self, stem: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(stem)))
        return out.mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d pooled feature the classifier sees: (B, 3, H, W) → (B, 64)."""
        return self._trunk(F.relu(self.bn1(self.conv1(x))))

    def features_ldmlr(self, x: torch.Tensor) -> torch.Tensor:
        """LDMLR's extraction path: as `features` but without the stem ReLU (BN mode is the caller's)."""
        return self._trunk(self.bn1(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet32(num_classes: int) -> ResNetCifar:
    """ResNet-32 (5 blocks per stage, about 0.46 M parameters), the encoder of all LDMLR CIFAR runs."""
    return ResNetCifar(num_classes, blocks_per_stage=5)
