"""Rebuild LDMLR's exact long-tailed train splits from the official CIFAR files.

No seeded rule reproduces LDMLR's images, so the package ships its lists (splits/*.txt.gz, one
line per image in the packed file's order: name, label, pixel fingerprint).

Names alone are not a safe key. CIFAR-100's are LDMLR's own and end in the official train index,
which selects directly. CIFAR-10's are CIFAR's `filenames` field, which comes from Tiny Images
search keywords, and one keyword ("cruiser") feeds two classes; nothing guarantees a name occurs
once in the 50,000 training images. So an image is found by (name, label, fingerprint), and every
selected image is checked against its fingerprint: the result is LDMLR's split bit for bit, or an
error, never a silently different set.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from featdiff.data.imageset import ImageSet
from featdiff.errors import UserError

LDMLR_DATASETS = ("cifar10", "cifar100")
LDMLR_IMBALANCE_FACTORS = (10, 100)
_FINGERPRINT_BYTES = 4


@dataclass(frozen=True)
class SplitList:
    """One shipped list, as parallel arrays in the packed file's order."""

    names: np.ndarray
    labels: np.ndarray
    fingerprints: np.ndarray


def image_fingerprints(images: torch.Tensor) -> np.ndarray:
    """blake2b of each image's NCHW bytes, as hex: a Python loop, but run once per split at ~4 µs an image."""
    flat = images.cpu().contiguous().reshape(len(images), -1).numpy()
    return np.array([hashlib.blake2b(row, digest_size=_FINGERPRINT_BYTES).hexdigest() for row in flat])


def check_published(dataset: str, imbalance_factor: float) -> int:
    """The IF as an int, after checking that LDMLR published this split at all."""
    if dataset not in LDMLR_DATASETS:
        raise UserError(f"unknown dataset {dataset!r}: use one of {', '.join(LDMLR_DATASETS)}")
    if imbalance_factor not in LDMLR_IMBALANCE_FACTORS:
        raise UserError(
            f"LDMLR published no {dataset} split with imbalance factor {imbalance_factor}: use one of "
            f"{', '.join(map(str, LDMLR_IMBALANCE_FACTORS))}, or source ldam-official for any other"
        )
    return int(imbalance_factor)


def split_list_file(dataset: str, imbalance_factor: float) -> str:
    return f"{dataset}_lt_if{check_published(dataset, imbalance_factor)}.txt.gz"


def write_split_list(path: Path, split: ImageSet) -> None:
    """Deterministic bytes (gzip mtime 0), so re-exporting an unchanged split changes no file."""
    if split.names is None:
        raise ValueError("a split list needs image names")
    lines = (
        f"{name}\t{label}\t{fingerprint}\n"
        for name, label, fingerprint in zip(split.names, split.labels.tolist(), image_fingerprints(split.images), strict=True)
    )
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
        stream.write("".join(lines).encode("utf-8"))


def read_split_list(dataset: str, imbalance_factor: float) -> SplitList:
    packed = resources.files("featdiff.data") / "splits" / split_list_file(dataset, imbalance_factor)
    rows = np.array([line.split("\t") for line in gzip.decompress(packed.read_bytes()).decode("utf-8").splitlines()])
    return SplitList(names=rows[:, 0], labels=rows[:, 1].astype(np.int64), fingerprints=rows[:, 2])


def ldmlr_split(official_train: ImageSet, dataset: str, imbalance_factor: int) -> ImageSet:
    """LDMLR's train split for (dataset, IF), in its list's order, taken from the official train set."""
    wanted = read_split_list(dataset, imbalance_factor)
    index = _by_train_index(official_train, wanted) if dataset == "cifar100" else _by_name(official_train, wanted)
    chosen = torch.from_numpy(index)
    images, labels = official_train.images[chosen], official_train.labels[chosen]
    same = (labels.cpu().numpy() == wanted.labels) & (image_fingerprints(images) == wanted.fingerprints)
    _require(same, wanted.names, f"the official {dataset} train images differ from LDMLR's")
    return ImageSet(images, labels, official_train.classes, tuple(wanted.names.tolist()))


def _by_train_index(official_train: ImageSet, wanted: SplitList) -> np.ndarray:
    """LDMLR's CIFAR-100 names end in `_<train index>.png`."""
    index = np.array([int(name.rsplit("_", 1)[1].removesuffix(".png")) for name in wanted.names], dtype=np.int64)
    _require(index < len(official_train), wanted.names, "the official train set has no image at LDMLR's index")
    return index


def _by_name(official_train: ImageSet, wanted: SplitList) -> np.ndarray:
    if official_train.names is None:
        raise ValueError("official_train needs CIFAR's file names (load it with load_official)")
    have = _keys(np.asarray(official_train.names), official_train.labels.cpu().numpy(), image_fingerprints(official_train.images))
    need = _keys(wanted.names, wanted.labels, wanted.fingerprints)
    order = np.argsort(have, kind="stable")
    position = np.searchsorted(have[order], need).clip(max=len(have) - 1)
    _require(have[order][position] == need, wanted.names, "the official train set has no image with LDMLR's name")
    return order[position]


def _keys(names: np.ndarray, labels: np.ndarray, fingerprints: np.ndarray) -> np.ndarray:
    return np.char.add(np.char.add(np.char.add(names, "\t"), labels.astype(str)), np.char.add("\t", fingerprints))


def _require(ok: np.ndarray, names: np.ndarray, problem: str) -> None:
    if not ok.all():
        bad = names[~ok]
        raise UserError(
            f"{problem} ({len(bad)} of {len(names)} listed images, e.g. {bad[0]}): "
            "re-download the official files with `featdiff data download`"
        )
