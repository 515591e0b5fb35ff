"""CReFF's federated features: closed-form class gradients against autograd, their federated average against
the pooled data, the matching distance against hand values, and feature matching that closes the gap."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featdiff.federated.creff import average_class_gradients, class_gradients, match_features, matching_distance

torch.set_num_threads(1)


def _head(num_features: int, num_classes: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(num_features, num_classes).double()


def _reference_gradients(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One fresh head and one backward pass per class: the definition the closed form must reproduce."""
    rows = []
    for c in range(num_classes):
        mask = labels == c
        if not mask.any():
            rows.append(torch.zeros(num_classes * (head.in_features + 1), dtype=features.dtype))
            continue
        copy = nn.Linear(head.in_features, num_classes).double()
        copy.load_state_dict(head.state_dict())
        F.cross_entropy(copy(features[mask]), labels[mask]).backward()
        rows.append(torch.cat([copy.weight.grad, copy.bias.grad.unsqueeze(1)], dim=1).flatten())
    return torch.stack(rows)


def test_class_gradients_match_autograd_and_leave_absent_classes_zero():
    num_classes, num_features = 5, 7
    head = _head(num_features, num_classes, seed=0)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(40, num_features, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (40,), generator=generator)
    labels[labels == 3] = 0  # class 3 absent
    gradients, counts = class_gradients(head, features, labels, num_classes)
    assert gradients.shape == (num_classes, num_classes * (num_features + 1))
    torch.testing.assert_close(gradients, _reference_gradients(head, features, labels, num_classes), rtol=1e-10, atol=1e-12)
    assert torch.equal(gradients[3], torch.zeros_like(gradients[3]))
    assert counts.tolist() == torch.bincount(labels, minlength=num_classes).tolist() and counts[3] == 0
    assert head.weight.grad is None and head.bias.grad is None


def test_class_gradients_are_differentiable_in_the_features_without_touching_the_head():
    num_classes, num_features = 3, 2
    head = _head(num_features, num_classes, seed=2)
    features = torch.randn(6, num_features, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert torch.autograd.gradcheck(lambda x: class_gradients(head, x, labels, num_classes)[0], (features,))
    class_gradients(head, features, labels, num_classes)[0].square().sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert head.weight.grad is None and head.bias.grad is None


def test_class_gradients_reject_a_head_of_another_width():
    with pytest.raises(ValueError, match="num_classes"):
        class_gradients(_head(2, 3, seed=0), torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]), 4)


def test_averaged_client_gradients_equal_the_pooled_gradients():
    """Client 0 lacks class 2, client 1 lacks class 0, nobody holds class 3."""
    num_classes, num_features = 4, 5
    head = _head(num_features, num_classes, seed=4)
    generator = torch.Generator().manual_seed(5)
    first_x = torch.randn(30, num_features, generator=generator, dtype=torch.float64)
    first_y = torch.randint(0, 2, (30,), generator=generator)
    second_x = torch.randn(17, num_features, generator=generator, dtype=torch.float64)
    second_y = torch.randint(1, 3, (17,), generator=generator)
    averaged, counts = average_class_gradients(
        *zip(class_gradients(head, first_x, first_y, num_classes), class_gradients(head, second_x, second_y, num_classes), strict=True)
    )
    pooled, pooled_counts = class_gradients(head, torch.cat([first_x, second_x]), torch.cat([first_y, second_y]), num_classes)
    torch.testing.assert_close(averaged, pooled, rtol=0, atol=1e-10)
    assert torch.equal(counts, pooled_counts) and counts[3] == 0
    assert torch.equal(averaged[3], torch.zeros_like(averaged[3]))
    with pytest.raises(ValueError, match="one count vector per gradient"):
        average_class_gradients([averaged], [])


def test_matching_distance_is_zero_on_identical_inputs():
    gradients = torch.randn(4, 4 * 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    present = torch.tensor([True, True, False, True])
    assert matching_distance(gradients, gradients, present, 4).abs().item() < 1e-12
    assert matching_distance(3 * gradients, gradients, present, 4).abs().item() < 1e-12  # scale-free


def test_matching_distance_by_hand_on_two_classes_in_one_dimension():
    """Rows are [w, b] pairs. Class 0: rows at 45° and aligned → 1 − 1/√2. Class 1: aligned and opposite → 2."""
    synthetic = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, -1.0, 0.0]], dtype=torch.float64)
    real = torch.tensor([[1.0, 1.0, 0.0, 2.0], [2.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    both = torch.tensor([True, True])
    assert matching_distance(synthetic, real, both, 2).item() == pytest.approx(1 - 1 / math.sqrt(2) + 2, abs=1e-12)
    assert matching_distance(synthetic, real, torch.tensor([True, False]), 2).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-12)
    # A zero row has cosine 0 with anything, and its distance stays finite and differentiable.
    zero = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    distance = matching_distance(zero, real, both, 2)
    distance.backward()
    assert distance.item() == pytest.approx(4.0) and torch.isfinite(zero.grad).all()


def test_match_features_closes_most_of_the_gap_and_changes_neither_head_nor_absent_classes():
    num_classes, num_features, per_class = 4, 6, 5
    head = _head(num_features, num_classes, seed=7)
    before = {name: value.clone() for name, value in head.state_dict().items()}
    generator = torch.Generator().manual_seed(8)
    centres = 3 * torch.randn(num_classes, num_features, generator=generator, dtype=torch.float64)
    real_y = torch.randint(0, num_classes - 1, (300,), generator=generator)  # the last class is held by nobody
    real_x = centres[real_y] + torch.randn(300, num_features, generator=generator, dtype=torch.float64)
    real, counts = class_gradients(head, real_x, real_y, num_classes)
    present = counts > 0
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    start = torch.randn(num_classes * per_class, num_features, generator=generator, dtype=torch.float64)
    initial = matching_distance(class_gradients(head, start, labels, num_classes)[0], real, present, num_classes)
    matched = match_features(head, start, labels, real, present, steps=100, lr=0.1)
    final = matching_distance(class_gradients(head, matched, labels, num_classes)[0], real, present, num_classes)
    assert final < 0.25 * initial  # about 0.03-0.05× across seeds
    assert not matched.requires_grad
    assert torch.equal(matched[labels == num_classes - 1], start[labels == num_classes - 1])
    assert not torch.equal(matched[labels == 0], start[labels == 0])
    for name, value in head.state_dict().items():
        assert torch.equal(value, before[name])
    assert head.weight.grad is None and head.bias.grad is None
