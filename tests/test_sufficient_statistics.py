"""Aggregated sufficient statistics equal the pooled features' statistics, computed independently."""

import torch

from featdiff.diffusion.scaling import Standardizer
from featdiff.federated.partition import dirichlet_partition
from featdiff.statistics import SufficientStatistics, class_means_and_covariances


def pooled_and_clients():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (600,), generator=generator)
    features = torch.randn(600, 6, generator=generator, dtype=torch.float64) * 3 + labels[:, None].double()
    parts = dirichlet_partition(labels, clients=7, alpha=0.5, seed=1)
    return features, labels, parts


def test_client_sums_equal_the_pooled_class_moments():
    features, labels, parts = pooled_and_clients()
    total = SufficientStatistics.total([SufficientStatistics.of(features[p], labels[p], 5) for p in parts])
    means, covariances = total.means_and_covariances()
    expected_means, expected_covariances, mass = class_means_and_covariances(features, labels, torch.ones(600, dtype=torch.float64), 5)
    torch.testing.assert_close(total.counts, mass)
    torch.testing.assert_close(means, expected_means, rtol=0, atol=1e-10)
    torch.testing.assert_close(covariances, expected_covariances, rtol=0, atol=1e-9)


def test_aggregated_scaling_is_the_pooled_standardizer():
    features, labels, parts = pooled_and_clients()
    total = SufficientStatistics.total([SufficientStatistics.of(features[p], labels[p], 5) for p in parts])
    scaler, expected = total.standardizer(), Standardizer.fitted(features)
    torch.testing.assert_close(scaler.mean.double(), expected.mean.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(scaler.std.double(), expected.std.double(), rtol=1e-6, atol=0)


def test_round_trip_through_a_dict():
    features, labels, _ = pooled_and_clients()
    stats = SufficientStatistics.of(features, labels, 5)
    again = SufficientStatistics.from_dict(stats.as_dict())
    assert all(torch.equal(a, b) for a, b in zip(stats.as_dict().values(), again.as_dict().values(), strict=True))
