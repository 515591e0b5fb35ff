"""An encoder trained on other data: its features are kept, its classifier is replaced."""

import pytest
import torch

from featdiff.config import config_from_dict
from featdiff.errors import UserError
from featdiff.models.encoders import load_encoder


def test_cifar100_encoder_gives_cifar10_features_with_a_fresh_seeded_head(data_root):
    path = data_root / "ldmlr_resnet32_cifar100_lt_if100.safetensors"
    original = load_encoder(path, 100).eval()
    public = load_encoder(path, 10, new_head=torch.Generator().manual_seed(1)).eval()
    again = load_encoder(path, 10, new_head=torch.Generator().manual_seed(1)).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(public.features(images), original.features(images))
        assert public(images).shape == (4, 10)
    assert torch.equal(public.fc.weight, again.fc.weight)
    with pytest.raises(UserError, match="encoder.public"):
        load_encoder(path, 10)


def test_public_needs_a_checkpoint():
    with pytest.raises(UserError, match="encoder.public"):
        config_from_dict({"data": {"dataset": "cifar10"}, "encoder": {"public": True}})
