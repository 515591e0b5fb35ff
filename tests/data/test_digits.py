import numpy as np
import pytest
from sklearn.datasets import load_digits

from featdiff.data.digits import load_digits_lt
from featdiff.data.ldam_split import ldam_class_counts
from featdiff.errors import UserError


@pytest.fixture(scope="module")
def reference():
    return load_digits()


def test_pixels_are_the_bundled_digits_rescaled_to_bytes(reference):
    train, test = load_digits_lt()
    for part in (train, test):
        assert part.images.dtype.is_floating_point is False and tuple(part.images.shape[1:]) == (1, 8, 8)
        source = reference.images[[int(name) for name in part.names]]
        assert np.abs(part.images[:, 0].numpy() / 255 * 16 - source).max() <= 16 / 255 / 2 + 1e-9
        assert part.labels.tolist() == reference.target[[int(name) for name in part.names]].tolist()
    assert train.classes == tuple(str(d) for d in range(10))


def test_test_split_is_stratified_and_disjoint_from_train(reference):
    train, test = load_digits_lt(imbalance_factor=10, test_fraction=0.3)
    full = np.bincount(reference.target, minlength=10)
    assert np.all(np.abs(test.class_counts().numpy() - 0.3 * full) <= 1)
    assert not set(train.names) & set(test.names)


@pytest.mark.parametrize("imbalance_factor", [1, 10, 50])
def test_train_is_ldam_long_tailed_with_the_smallest_pool_as_head(reference, imbalance_factor):
    train, test = load_digits_lt(imbalance_factor=imbalance_factor)
    pool = np.bincount(reference.target, minlength=10) - test.class_counts().numpy()
    assert train.class_counts().tolist() == ldam_class_counts(int(pool.min()), 10, imbalance_factor)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a_train, a_test = load_digits_lt(seed=3)
    b_train, b_test = load_digits_lt(seed=3)
    assert a_train.names == b_train.names and a_test.names == b_test.names
    assert load_digits_lt(seed=4)[1].names != a_test.names


@pytest.mark.parametrize("kwargs", [{"imbalance_factor": 0.5}, {"test_fraction": 0.0}, {"test_fraction": 1.2}])
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(UserError):
        load_digits_lt(**kwargs)
