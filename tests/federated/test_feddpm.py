"""FedDDPM's server decisions: the auxiliary allocation and QUICK-TEST, against hand-worked cases."""

import pytest
import torch

from featdiff.federated.feddpm import auxiliary_counts, learning_is_slow, relative_improvements


def test_auxiliary_counts_follow_client_shares_and_sum_exactly():
    counts = torch.tensor([[300, 10, 0], [100, 0, 0], [600, 30, 0]])
    allocation = auxiliary_counts(counts, total_per_class=100)
    assert allocation[:, 0].tolist() == [30, 10, 60]
    assert allocation[:, 1].tolist() == [25, 0, 75]
    assert allocation[:, 2].tolist() == [0, 0, 0]  # nobody holds class 2


def test_largest_remainders_keep_the_total():
    counts = torch.tensor([[1, 1], [1, 2], [1, 4]])
    allocation = auxiliary_counts(counts, total_per_class=10)
    assert allocation.sum(0).tolist() == [10, 10]
    assert sorted(allocation[:, 0].tolist()) == [3, 3, 4]


def test_quick_test_flags_only_a_sustained_slowdown():
    assert relative_improvements([1.0, 0.5, 0.45]) == pytest.approx([0.5, 0.1])
    losses = [1.0, 0.8, 0.79, 0.785, 0.7849]
    assert not learning_is_slow(losses[:3], threshold=0.02, patience=2)
    assert learning_is_slow(losses, threshold=0.02, patience=2)
    assert not learning_is_slow([1.0, 0.99, 0.5, 0.499], threshold=0.02, patience=2)
    assert not learning_is_slow([1.0], threshold=0.02, patience=1)
