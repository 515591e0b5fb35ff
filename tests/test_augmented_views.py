"""`features.augmented_views`: the training features are the clean eval-mode view followed by that
many seeded augmented views of the same images (a denoiser trained on test-like features, issue 17),
checked against the encoder applied by hand; the features classifiers are scored on stay clean."""

from pathlib import Path

import pytest
import torch

from featdiff.config import FeatureConfig, load_config
from featdiff.data.augment import normalize
from featdiff.data.bundle import load_dataset
from featdiff.features import encode_dataset
from featdiff.models.small_cnn import SmallCNN

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(load_config(PROJECT_ROOT / "configs" / "digits_ldmlr.yaml").data)


def by_hand(model: torch.nn.Module, bundle, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().features(normalize(images, bundle.mean, bundle.std))


def shifted_by_hand(model: torch.nn.Module, bundle) -> torch.Tensor:
    """(N, 9, D): each training image's features at each of the 3×3 crops of its 1-pixel zero padding
    (the digits' augmentation; their mirror images are other digits, so no flips)."""
    images = bundle.train.images
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    height, width = images.shape[-2:]
    crops = [padded[..., dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
    return torch.stack([by_hand(model, bundle, crop) for crop in crops], dim=1)


def test_augmented_views_follow_the_clean_view_as_seeded_views_of_the_same_images(digits, tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(digits.num_classes, in_channels=digits.train.images.shape[1]).eval()
    n = len(digits.train.labels)
    config = FeatureConfig(style="eval", augmented_views=2)
    encoded = encode_dataset(model, digits, config, 0, CPU, cache=tmp_path / "a")
    clean = by_hand(model, digits, digits.train.images)

    assert encoded.train.features.shape == (3 * n, clean.shape[1])
    assert torch.equal(encoded.train.labels, digits.train.labels.repeat(3))
    assert torch.allclose(encoded.train.features[:n], clean, atol=1e-5)
    first, second = encoded.train.features[n:].view(2, n, -1)
    for view in (first, second):
        distance, shift = torch.cdist(view[:, None], shifted_by_hand(model, digits)).squeeze(1).min(dim=1)
        assert distance.max() < 1e-3  # every row is its own image's features, cropped at one of the 9 offsets
        assert shift.bincount(minlength=9).min() > 0  # and the offsets are drawn, not fixed
    assert not torch.allclose(first, second, atol=1e-3)  # each view draws its own crops
    assert torch.allclose(encoded.test.features, by_hand(model, digits, digits.test.images), atol=1e-5)

    again = encode_dataset(model, digits, config, 0, CPU, cache=tmp_path / "b")
    reseeded = encode_dataset(model, digits, config, 1, CPU, cache=tmp_path / "c")
    assert torch.equal(again.train.features, encoded.train.features)  # seeded
    assert torch.equal(reseeded.train.features[:n], encoded.train.features[:n])
    assert not torch.allclose(reseeded.train.features[n:], encoded.train.features[n:], atol=1e-3)
    assert torch.equal(
        encode_dataset(model, digits, FeatureConfig(style="eval"), 0, CPU, cache=tmp_path / "d").train.features[:n],
        again.train.features[:n],
    )
