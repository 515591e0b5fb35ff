import json

import numpy as np
import pytest
import torch

from featdiff.data import cifar
from featdiff.data.cifar import load_cifar_lt
from featdiff.data.imageset import ImageSet
from featdiff.data.ldam_split import ldam_class_counts
from featdiff.errors import UserError


@pytest.mark.parametrize("dataset, imbalance_factor", [("cifar10", 100), ("cifar100", 10.0)])
def test_packed_source_reads_the_split_and_the_full_test_set(data_root, dataset, imbalance_factor):
    manifest = json.loads((data_root / "MANIFEST.json").read_text())
    train, test = load_cifar_lt(dataset, imbalance_factor, data_root)
    assert train.class_counts().tolist() == manifest[f"{dataset}_lt_if{int(imbalance_factor)}_train.npz"]["per_class"]
    assert test.class_counts().tolist() == manifest[f"{dataset}_test.npz"]["per_class"]


def test_ldam_source_draws_ldam_counts_from_the_official_files(tmp_path, fake_official):
    written = fake_official(tmp_path, "cifar10", 40, test_count=30)
    train, test = load_cifar_lt("cifar10", 5, tmp_path, source="ldam-official")
    pool = np.bincount(written.train_labels, minlength=10)
    assert train.class_counts().tolist() == ldam_class_counts(int(pool.min()), 10, 5)
    assert test.labels.tolist() == written.test_labels.tolist()


def test_ldmlr_official_source_rebuilds_ldmlr_split(data_root, monkeypatch):
    """Only the routing is checked here; test_ldmlr_split checks the rebuild itself."""
    packed_train, packed_test = load_cifar_lt("cifar100", 100, data_root)
    official_train = ImageSet(
        torch.zeros(50_000, 3, 32, 32, dtype=torch.uint8), torch.zeros(50_000, dtype=torch.int64), packed_train.classes
    )
    index = torch.tensor([int(name.rsplit("_", 1)[1].split(".")[0]) for name in packed_train.names])
    official_train.images[index] = packed_train.images
    official_train.labels[index] = packed_train.labels
    monkeypatch.setattr(cifar, "load_official", lambda dataset, root: (official_train, packed_test))
    train, test = load_cifar_lt("cifar100", 100, data_root, source="ldmlr-official")
    assert torch.equal(train.images, packed_train.images) and train.names == packed_train.names
    assert test is packed_test


@pytest.mark.parametrize(
    "dataset, imbalance_factor, source, needle",
    [
        ("cifar1000", 100, "ldmlr-packed", "cifar10, cifar100"),
        ("cifar10", 50, "ldmlr-packed", "10, 100"),
        ("cifar10", 12.5, "ldmlr-official", "10, 100"),
        ("cifar10", 0.5, "ldam-official", "imbalance factor"),
        ("cifar10", 100, "torchvision", "ldmlr-packed, ldmlr-official, ldam-official"),
    ],
)
def test_bad_requests_fail_before_reading_data(tmp_path, dataset, imbalance_factor, source, needle):
    with pytest.raises(UserError, match=needle) as caught:
        load_cifar_lt(dataset, imbalance_factor, tmp_path / "empty", source=source)
    assert "\n" not in str(caught.value)
