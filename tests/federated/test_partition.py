"""The per-class Dirichlet split: a seeded partition of every record, whose concentration follows α."""

import numpy as np
import pytest
import torch

from featdiff.errors import UserError
from featdiff.federated.partition import client_counts, dirichlet_partition


def long_tailed_labels(classes: int = 10, largest: int = 500, imbalance: float = 100.0) -> torch.Tensor:
    sizes = [int(largest * imbalance ** (-c / (classes - 1))) for c in range(classes)]
    return torch.arange(classes).repeat_interleave(torch.tensor(sizes))


def test_partition_covers_every_record_once_and_is_seeded():
    labels = long_tailed_labels()
    parts = dirichlet_partition(labels, clients=20, alpha=0.5, seed=3)
    joined = torch.cat(parts)
    assert torch.equal(joined.sort().values, torch.arange(len(labels)))
    assert all(len(part) >= 1 for part in parts)
    again = dirichlet_partition(labels, clients=20, alpha=0.5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    other = dirichlet_partition(labels, clients=20, alpha=0.5, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(parts, other, strict=True))
    counts = client_counts(parts, labels, 10)
    assert torch.equal(counts.sum(0), torch.bincount(labels))


def test_concentration_follows_alpha():
    """A class's largest client share averages about 1/N for large α, most of the class for small α."""
    labels = long_tailed_labels(largest=2000, imbalance=10.0)

    def mean_top_share(alpha: float) -> float:
        counts = client_counts(dirichlet_partition(labels, 10, alpha, seed=0), labels, 10).double()
        return float((counts.max(0).values / counts.sum(0)).mean())

    assert mean_top_share(1000.0) < 0.15  # 1/N = 0.1 plus sampling noise
    assert mean_top_share(0.05) > 0.7


def test_shares_match_the_dirichlet_mean_over_seeds():
    labels = long_tailed_labels(largest=1000, imbalance=1.0)
    shares = np.stack([client_counts(dirichlet_partition(labels, 5, 0.5, seed=s), labels, 10).double().numpy() / 1000 for s in range(40)])
    # E[share] = 1/5 per client and class; the mean over 400 draws has std ≈ 0.016.
    assert np.abs(shares.mean(axis=(0, 2)) - 0.2).max() < 0.06


@pytest.mark.parametrize(
    "clients, alpha, min_records, fragment",
    [(5, 0.0, 1, "federated.alpha"), (2000, 0.5, 1, "federated.clients"), (20, 0.5, 100, "federated.clients")],
)
def test_impossible_partitions_name_the_key(clients, alpha, min_records, fragment):
    labels = long_tailed_labels()
    with pytest.raises(UserError, match=fragment):
        dirichlet_partition(labels, clients, alpha, seed=0, min_records=min_records)
