"""The class-Gaussian generator against numpy: its moments, its shrinkage, its temperature."""

import numpy as np
import pytest
import torch

from featdiff.generation.gaussian import ClassGaussian, shrunk_covariances
from featdiff.statistics import SufficientStatistics


def _features(seed=0):
    rng = np.random.default_rng(seed)
    counts = [400, 60, 1]
    features = np.concatenate([rng.normal(size=(n, 3)) @ rng.normal(size=(3, 3)) + 4.0 * c for c, n in enumerate(counts)])
    labels = np.repeat(np.arange(3), counts)
    return torch.from_numpy(features), torch.from_numpy(labels)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3, 1.0])
def test_shrunk_covariances_match_numpy(shrinkage):
    features, labels = _features()
    means, covariances = shrunk_covariances(SufficientStatistics.of(features, labels, 3), shrinkage)
    x, y = features.numpy(), labels.numpy()
    own = [np.cov(x[y == c].T, bias=True) for c in range(3)]
    pooled = sum(np.sum(y == c) * own[c] for c in range(3)) / len(y)
    for c in range(3):
        expected = pooled if np.sum(y == c) < 2 else (1 - shrinkage) * own[c] + shrinkage * pooled
        np.testing.assert_allclose(means[c].numpy(), x[y == c].mean(0), atol=1e-10)
        np.testing.assert_allclose(covariances[c].numpy(), expected, atol=1e-8)


def test_samples_have_the_fitted_moments_and_temperature_scales_them():
    features, labels = _features()
    gaussian = ClassGaussian.fitted(SufficientStatistics.of(features, labels, 3), shrinkage=0.2)
    counts = torch.tensor([20000, 20000, 20000])
    draws, drawn_labels = gaussian.generate(counts, torch.Generator().manual_seed(0))
    hot, _ = gaussian.generate(counts, torch.Generator().manual_seed(0), temperatures=torch.tensor([1.0, 2.0, 1.0]))
    _, covariances = shrunk_covariances(SufficientStatistics.of(features, labels, 3), 0.2)
    for c in range(3):
        x = draws[drawn_labels == c].double()
        sd = covariances[c].diagonal().sqrt()
        assert ((x.mean(0) - gaussian.means[c]).abs() < 5 * sd / 20000**0.5).all()
        assert torch.allclose(torch.cov(x.T), covariances[c], rtol=0.05, atol=0.05 * float(sd.max()) ** 2)
    ratio = hot[drawn_labels == 1].double().std(0) / draws[drawn_labels == 1].double().std(0)
    assert torch.allclose(ratio, torch.full((3,), 2.0, dtype=torch.float64), rtol=1e-4)
    assert torch.equal(hot[drawn_labels == 0], draws[drawn_labels == 0])


def test_shrinkage_outside_the_unit_interval_is_refused():
    features, labels = _features()
    with pytest.raises(ValueError, match="shrinkage"):
        shrunk_covariances(SufficientStatistics.of(features, labels, 3), 1.5)


def test_pooled_moments_match_numpy_and_every_class_shares_them():
    from featdiff.generation.gaussian import pooled_moments, resolved_covariance

    features, labels = _features()
    counts, means, within = pooled_moments(features, labels, 3, chunk=50)
    x, y = features.numpy(), labels.numpy()
    centred = x - np.stack([x[y == c].mean(0) for c in range(3)])[y]
    np.testing.assert_allclose(within.numpy(), centred.T @ centred / len(y), atol=1e-9)
    np.testing.assert_allclose(means.numpy(), np.stack([x[y == c].mean(0) for c in range(3)]), atol=1e-10)
    pooled = ClassGaussian.fitted_to(features, labels, 3, shrinkage=0.2, covariance="pooled")
    assert pooled.factors.shape == (1, 3, 3)
    draws, drawn = pooled.generate(torch.tensor([20000, 20000, 1]), torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(draws[drawn == 0].double().T), within, rtol=0.05, atol=0.05)
    assert resolved_covariance("auto", 100, 64) == "full" and resolved_covariance("auto", 1000, 2048) == "pooled"
