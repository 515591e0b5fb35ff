import json

import numpy as np
import pytest
import torch

from featdiff.data.imageset import ImageSet
from featdiff.data.ldam_split import ldam_class_counts, ldam_split
from featdiff.errors import UserError

SHIPPED_TRAIN_SPLITS = {  # file: (n_max, classes, IF)
    "cifar10_lt_if100_train.npz": (5000, 10, 100),
    "cifar10_lt_if10_train.npz": (5000, 10, 10),
    "cifar100_lt_if100_train.npz": (500, 100, 100),
    "cifar100_lt_if10_train.npz": (500, 100, 10),
}


@pytest.mark.parametrize("name", SHIPPED_TRAIN_SPLITS)
def test_counts_equal_the_published_splits(data_root, name):
    per_class = json.loads((data_root / "MANIFEST.json").read_text())[name]["per_class"]
    assert ldam_class_counts(*SHIPPED_TRAIN_SPLITS[name]) == per_class


@pytest.mark.parametrize(
    "n_max, classes, total_by_if",
    [(5000, 10, {100: 12_406, 50: 13_996, 10: 20_431}), (500, 100, {100: 10_847, 50: 12_608, 10: 19_573})],
)
def test_totals_equal_the_literature(n_max, classes, total_by_if):
    for imbalance_factor, total in total_by_if.items():
        assert sum(ldam_class_counts(n_max, classes, imbalance_factor)) == total


def test_head_and_tail_follow_the_imbalance_factor():
    counts = ldam_class_counts(1000, 5, 20)
    assert counts[0] == 1000 and counts[-1] == 50
    assert counts == sorted(counts, reverse=True)
    assert ldam_class_counts(7, 3, 1) == [7, 7, 7]


@pytest.mark.parametrize("bad", [0.5, 0, -3, float("nan")])
def test_imbalance_factor_below_one_is_a_user_error(bad):
    with pytest.raises(UserError, match="imbalance factor"):
        ldam_class_counts(100, 10, bad)
    with pytest.raises(UserError, match="imbalance factor"):
        ldam_split(labelled_by_index(np.zeros(4, dtype=np.int64), 1), bad)


def labelled_by_index(labels: np.ndarray, num_classes: int) -> ImageSet:
    """Names are the original positions, so a split can be compared by index."""
    count = len(labels)
    return ImageSet(
        torch.zeros(count, 1, 1, 1, dtype=torch.uint8),
        torch.from_numpy(labels.astype(np.int64)),
        tuple(str(c) for c in range(num_classes)),
        names=tuple(str(i) for i in range(count)),
    )


def ldam_reference(labels: np.ndarray, counts: list[int]) -> list[int]:
    """LDAM-DRW's gen_imbalanced_data, as written there, on the global generator."""
    np.random.seed(0)
    selected = []
    for the_class, the_img_num in zip(np.unique(labels), counts, strict=True):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        selected.extend(idx[:the_img_num].tolist())
    return selected


@pytest.mark.parametrize("num_classes, per_class, imbalance_factor", [(10, 500, 100), (100, 50, 10), (10, 500, 50)])
def test_selection_matches_ldam_code_on_a_balanced_pool(num_classes, per_class, imbalance_factor):
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(num_classes), per_class))
    saved = np.random.get_state()
    try:
        expected = ldam_reference(labels, ldam_class_counts(per_class, num_classes, imbalance_factor))
    finally:
        np.random.set_state(saved)
    split = ldam_split(labelled_by_index(labels, num_classes), imbalance_factor, seed=0)
    assert [int(name) for name in split.names] == expected
    assert split.labels.tolist() == labels[expected].tolist()


def test_unbalanced_pool_uses_the_smallest_class_as_head_count():
    labels = np.random.default_rng(2).permutation(np.repeat(np.arange(4), [30, 12, 20, 25]))
    split = ldam_split(labelled_by_index(labels, 4), 4)
    assert split.class_counts().tolist() == ldam_class_counts(12, 4, 4)
    assert len(set(split.names)) == len(split)


def test_split_leaves_the_global_generator_alone_and_depends_on_seed():
    labels = np.repeat(np.arange(5), 40)
    pool = labelled_by_index(labels, 5)
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    a = ldam_split(pool, 10, seed=0)
    assert np.random.random() == before
    assert ldam_split(pool, 10, seed=0).names == a.names
    assert ldam_split(pool, 10, seed=1).names != a.names
