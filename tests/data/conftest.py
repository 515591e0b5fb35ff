"""Builders for small fake copies of the official CIFAR files, in their real on-disk layout."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class FakeOfficial:
    """What was written, to compare the loader's output with."""

    folder: Path
    train_images: np.ndarray  # uint8 (N, 3, 32, 32)
    train_labels: np.ndarray
    train_names: list[str]
    test_images: np.ndarray
    test_labels: np.ndarray
    test_names: list[str]
    classes: list[str]


def python2_style_pickle(content: dict, path: Path, old_numpy_spelling: bool = True) -> None:
    """Protocol 2 as the official files use; their arrays name `numpy.core.multiarray`, numpy 2 writes `_core`."""
    raw = pickle.dumps(content, protocol=2)
    if old_numpy_spelling:
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)


def write_fake_official(
    root: Path, dataset: str, train_per_file: int, test_count: int, seed: int = 0, old_numpy_spelling: bool = True
) -> FakeOfficial:
    rng = np.random.default_rng(seed)
    num_classes = 10 if dataset == "cifar10" else 100
    classes = [f"class_{c:03d}" for c in range(num_classes)]
    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        train_files, test_file, meta_file = [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"
        label_key, meta = b"labels", {b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": 10000}
    else:
        folder = root / "cifar-100-python"
        train_files, test_file, meta_file = ["train"], "test", "meta"
        label_key = b"fine_labels"
        meta = {b"fine_label_names": [c.encode() for c in classes], b"coarse_label_names": [b"coarse"] * 20}
    folder.mkdir(parents=True)

    def batch(count: int, prefix: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, num_classes, count)
        names = [f"{prefix}_s_{i:06d}.png" for i in range(count)]
        content = {
            b"batch_label": prefix.encode(),
            label_key: labels.tolist(),
            b"data": images.reshape(count, -1),
            b"filenames": [name.encode() for name in names],
        }
        if dataset == "cifar100":
            content[b"coarse_labels"] = (labels // 5).tolist()
        python2_style_pickle(content, folder / prefix, old_numpy_spelling)
        return images, labels, names

    train = [batch(train_per_file, name) for name in train_files]
    test = batch(test_count, test_file)
    python2_style_pickle(meta, folder / meta_file, old_numpy_spelling)
    return FakeOfficial(
        folder=folder,
        train_images=np.concatenate([t[0] for t in train]),
        train_labels=np.concatenate([t[1] for t in train]),
        train_names=[name for t in train for name in t[2]],
        test_images=test[0],
        test_labels=test[1],
        test_names=test[2],
        classes=classes,
    )


@pytest.fixture
def fake_official():
    return write_fake_official
