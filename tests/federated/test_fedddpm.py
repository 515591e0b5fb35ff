"""FedDDPM+'s QUICK-TEST, against hand-worked cases."""

import pytest

from featdiff.federated.fedddpm import learning_is_slow, relative_improvements


def test_quick_test_flags_only_a_sustained_slowdown():
    assert relative_improvements([1.0, 0.5, 0.45]) == pytest.approx([0.5, 0.1])
    losses = [1.0, 0.8, 0.79, 0.785, 0.7849]
    assert not learning_is_slow(losses[:3], threshold=0.02, patience=2)
    assert learning_is_slow(losses, threshold=0.02, patience=2)
    assert not learning_is_slow([1.0, 0.99, 0.5, 0.499], threshold=0.02, patience=2)
    assert not learning_is_slow([1.0], threshold=0.02, patience=1)
