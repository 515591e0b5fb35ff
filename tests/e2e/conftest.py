import pytest
import torch
from torch import nn

from featdiff.config import EndToEndConfig
from featdiff.methods.e2e.model import EndToEndModel
from featdiff.models.denoiser import FeatureDenoiser


class TinyEncoder(nn.Module):
    """Stands in for ResNet-32: `features`, `fc` and `feature_dim`, with a BatchNorm buffer."""

    def __init__(self, in_dim: int = 6, feature_dim: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.body = nn.Sequential(nn.Linear(in_dim, feature_dim), nn.BatchNorm1d(feature_dim))
        self.fc = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def make_model(config: EndToEndConfig, in_dim: int = 6, feature_dim: int = 4, num_classes: int = 3, seed: int = 0) -> EndToEndModel:
    torch.manual_seed(seed)
    encoder = TinyEncoder(in_dim, feature_dim, num_classes)
    denoiser = FeatureDenoiser(feature_dim, num_classes, width=16, depth=1, time_dim=8)
    # A zero-initialised output layer would make ε_θ constant; give it weights so gradients differ.
    nn.init.normal_(denoiser.output.weight, std=0.1)
    return EndToEndModel(encoder, denoiser, num_classes, config)


@pytest.fixture
def new_model():
    return make_model


@pytest.fixture
def toy_batch():
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(24) % 3
    images = torch.randn(24, 6, generator=generator) + labels[:, None].float()
    return images, labels
