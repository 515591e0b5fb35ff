"""LDMLR's split rebuilt from a fake official train set must equal the packed split bit for bit.

The fake set holds the packed split's images where the official files hold them (CIFAR-100: at
the train index in the name; CIFAR-10: anywhere, under CIFAR's file name) among random
distractors, including distractors that reuse a split image's name in another class and in the
same class, the collisions a name-only lookup would get wrong.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from featdiff.data.imageset import ImageSet
from featdiff.data.ldmlr_split import ldmlr_split, read_split_list
from featdiff.data.packed import load_packed
from featdiff.errors import UserError

OFFICIAL_TRAIN_SIZE = 50_000
SPLITS = [("cifar100", 100), ("cifar10", 100), ("cifar100", 10), ("cifar10", 10)]


def packed_split(data_root: Path, dataset: str, imbalance_factor: int) -> ImageSet:
    return load_packed(data_root / f"{dataset}_lt_if{imbalance_factor}_train.npz")


def fake_official_train(split: ImageSet, dataset: str, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (OFFICIAL_TRAIN_SIZE, 3, 32, 32), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, split.num_classes, OFFICIAL_TRAIN_SIZE))
    names = np.array([f"distractor_s_{i:06d}.png" for i in range(OFFICIAL_TRAIN_SIZE)], dtype=object)
    if dataset == "cifar100":
        where = np.array([int(name.rsplit("_", 1)[1].split(".")[0]) for name in split.names])
    else:
        where = rng.permutation(OFFICIAL_TRAIN_SIZE)[: len(split)]
        free = np.setdiff1d(np.arange(OFFICIAL_TRAIN_SIZE), where)
        other_class, same_class = free[:300], free[300:600]
        donors = rng.choice(len(split), 300, replace=False)
        names[other_class] = np.asarray(split.names)[donors]
        labels[other_class] = (split.labels[donors] + 1) % split.num_classes
        names[same_class] = np.asarray(split.names)[donors]
        labels[same_class] = split.labels[donors]
        names[where] = split.names
    images[where] = split.images
    labels[where] = split.labels
    return ImageSet(images, labels, split.classes, tuple(names.tolist()))


@pytest.mark.parametrize("dataset, imbalance_factor", SPLITS)
def test_rebuilt_split_equals_the_packed_split(data_root, dataset, imbalance_factor):
    split = packed_split(data_root, dataset, imbalance_factor)
    rebuilt = ldmlr_split(fake_official_train(split, dataset), dataset, imbalance_factor)
    assert torch.equal(rebuilt.images, split.images)
    assert torch.equal(rebuilt.labels, split.labels)
    assert rebuilt.names == split.names
    assert rebuilt.classes == split.classes


@pytest.mark.parametrize("dataset, imbalance_factor", SPLITS)
def test_shipped_list_follows_the_packed_file(data_root, dataset, imbalance_factor):
    listed = read_split_list(dataset, imbalance_factor)
    with np.load(data_root / f"{dataset}_lt_if{imbalance_factor}_train.npz", allow_pickle=False) as npz:
        assert listed.names.tolist() == npz["names"].tolist()
        assert listed.labels.tolist() == npz["labels"].tolist()
    if dataset == "cifar100":
        fine_from_name = [int(name.split("_", 1)[0]) for name in listed.names]
        assert listed.labels.tolist() == fine_from_name


def test_cifar10_names_are_unique_within_each_published_split(data_root):
    for imbalance_factor in (10, 100):
        names = read_split_list("cifar10", imbalance_factor).names
        assert len(set(names.tolist())) == len(names)


def test_a_changed_official_image_is_reported(data_root):
    split = packed_split(data_root, "cifar100", 100)
    official = fake_official_train(split, "cifar100")
    index = int(split.names[7].rsplit("_", 1)[1].split(".")[0])
    official.images[index, 0, 0, 0] ^= 1
    with pytest.raises(UserError, match=r"differ from LDMLR's \(1 of 10847 listed images") as caught:
        ldmlr_split(official, "cifar100", 100)
    assert split.names[7] in str(caught.value)


def test_a_wrong_official_label_is_reported(data_root):
    split = packed_split(data_root, "cifar100", 100)
    official = fake_official_train(split, "cifar100")
    index = int(split.names[-1].rsplit("_", 1)[1].split(".")[0])
    official.labels[index] = (official.labels[index] + 1) % 100
    with pytest.raises(UserError, match="differ from LDMLR's"):
        ldmlr_split(official, "cifar100", 100)


def test_a_cifar10_image_absent_from_the_official_set_is_reported(data_root):
    split = packed_split(data_root, "cifar10", 100)
    official = fake_official_train(split, "cifar10")
    names = list(official.names)
    names[names.index(split.names[3])] = "renamed.png"
    with pytest.raises(UserError, match=r"no image with LDMLR's name \(1 of 12406") as caught:
        ldmlr_split(ImageSet(official.images, official.labels, official.classes, tuple(names)), "cifar10", 100)
    assert split.names[3] in str(caught.value)


def test_a_short_official_cifar100_set_is_reported(data_root):
    split = packed_split(data_root, "cifar100", 10)
    official = fake_official_train(split, "cifar100").subset(torch.arange(40_000))
    with pytest.raises(UserError, match="no image at LDMLR's index"):
        ldmlr_split(official, "cifar100", 10)


@pytest.mark.parametrize("imbalance_factor", [50, 200, 1])
def test_unpublished_imbalance_factor_lists_the_available_ones(imbalance_factor):
    official = ImageSet(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64), ("a",))
    with pytest.raises(UserError, match="10, 100") as caught:
        ldmlr_split(official, "cifar10", imbalance_factor)
    assert "\n" not in str(caught.value)


def test_unknown_dataset_is_a_user_error():
    official = ImageSet(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64), ("a",))
    with pytest.raises(UserError, match="cifar100"):
        ldmlr_split(official, "svhn", 100)
