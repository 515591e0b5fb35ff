"""Head-to-tail transfer and class temperatures against their formulas."""

import pytest
import torch

from featdiff.generation.transfer import HeadToTail, class_temperatures, more_frequent_neighbours, transfer_strengths


def test_class_temperatures_and_strengths_follow_their_formulas():
    counts = torch.tensor([1000, 100, 10])
    assert class_temperatures(counts, 1.2, 0.5).tolist() == pytest.approx([1.2, 1.2 * 10**0.5, 1.2 * 100**0.5])
    assert class_temperatures(counts, 1.5, 0.0).tolist() == pytest.approx([1.5] * 3)
    assert transfer_strengths(counts, 0.6).tolist() == pytest.approx([0.0, 0.6 * 0.9, 0.6 * 0.99])


def test_neighbours_are_the_nearest_more_frequent_classes():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [9.0, 0.0]])
    counts = torch.tensor([500, 400, 50, 20])
    near = more_frequent_neighbours(means, counts, k=2)
    assert near[0].tolist() == []
    assert near[1].tolist() == [0]
    assert near[2].tolist() == [0, 1]  # only the two classes with more records, nearest first
    assert near[3].tolist() == [1, 2]


def _two_classes(seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(5000, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 0.5]) + torch.tensor([0.0, 5.0])
    tail = torch.randn(50, 2, generator=g, dtype=torch.float64) * 0.2
    return torch.cat([head, tail]).float(), torch.cat([torch.zeros(5000, dtype=torch.long), torch.ones(50, dtype=torch.long)])


@pytest.mark.parametrize("mode", ["calibration", "residual"])
def test_a_tail_class_takes_its_neighbours_mean_and_spread_by_its_strength(mode):
    features, labels = _two_classes()
    transfer = HeadToTail.fitted(mode, features, labels, 2, strength=0.5, neighbours=1)
    beta = float(transfer.strengths[1])  # 0.5 · (1 − 50/5000)
    tail_draws = torch.randn(40000, 2, generator=torch.Generator().manual_seed(1)) * 0.2
    moved = transfer(tail_draws, torch.ones(40000, dtype=torch.long), torch.Generator().manual_seed(2)).double()
    head_mean, tail_mean = features[:5000].double().mean(0), features[5000:].double().mean(0)
    expected_mean = (1 - beta) * tail_mean + beta * head_mean
    expected_var = (1 - beta) * 0.04 + beta * features[:5000].double().var(0)
    assert torch.allclose(moved.mean(0), expected_mean, atol=0.05)
    assert torch.allclose(moved.var(0), expected_var, rtol=0.06)


def test_the_head_class_and_mode_none_are_left_alone():
    features, labels = _two_classes()
    draws = torch.randn(100, 2)
    for mode in ("none", "calibration", "residual"):
        transfer = HeadToTail.fitted(mode, features, labels, 2, strength=0.9, neighbours=3)
        assert torch.equal(transfer(draws, torch.zeros(100, dtype=torch.long), torch.Generator().manual_seed(0)), draws)
