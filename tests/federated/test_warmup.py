"""The warm-up's auxiliary allocation, against hand-worked cases."""

import torch

from featdiff.federated.warmup import auxiliary_counts


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
