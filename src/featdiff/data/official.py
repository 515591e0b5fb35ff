"""The official CIFAR-10/100 "python version" files, read without trusting their pickles.

They are pickles, and an ordinary `pickle.load` runs whatever a tampered file asks for. The
unpickler below resolves only the few numpy names an array needs, so a hostile file fails to
load instead of executing code.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from featdiff.data.imageset import ImageSet
from featdiff.errors import UserError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2 has only the old spelling
    from numpy.core.multiarray import _reconstruct

Dataset = Literal["cifar10", "cifar100"]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


@dataclass(frozen=True)
class OfficialLayout:
    """Where one dataset's files sit inside the extracted archive, and which keys hold what."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    class_key: bytes

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


OFFICIAL_LAYOUTS: dict[str, OfficialLayout] = {
    "cifar10": OfficialLayout(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        class_key=b"label_names",
    ),
    "cifar100": OfficialLayout(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        class_key=b"fine_label_names",
    ),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file") from None


def load_official(dataset: Dataset, root: Path) -> tuple[ImageSet, ImageSet]:
    """(train, test) with CIFAR's own file names and label order; `root` holds the extracted folder."""
    layout = _layout(dataset)
    folder = official_folder(dataset, Path(root))
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"official {dataset} files missing in {folder} ({', '.join(missing)}): "
            f"run `featdiff data download {dataset} --dest {root}` or pass the folder that holds {layout.folder}"
        )
    meta_path = folder / layout.meta_file
    class_names = np.asarray(_field(_unpickle(meta_path), layout.class_key, meta_path))
    classes = tuple(np.char.decode(class_names, "utf-8").tolist())
    train = _read_batches([folder / name for name in layout.train_files], layout.label_key, classes)
    test = _read_batches([folder / name for name in layout.test_files], layout.label_key, classes)
    return train, test


def official_folder(dataset: Dataset, root: Path) -> Path:
    """Accept both the download destination and the extracted folder itself, as users pass either."""
    layout = _layout(dataset)
    nested = root / layout.folder
    return root if not nested.is_dir() and (root / layout.meta_file).is_file() else nested


def _layout(dataset: str) -> OfficialLayout:
    if dataset not in OFFICIAL_LAYOUTS:
        raise UserError(f"unknown dataset {dataset!r}: use one of {', '.join(OFFICIAL_LAYOUTS)}")
    return OFFICIAL_LAYOUTS[dataset]


def _read_batches(paths: list[Path], label_key: bytes, classes: tuple[str, ...]) -> ImageSet:
    batches = [_unpickle(path) for path in paths]
    data = np.concatenate([np.asarray(_field(b, b"data", p), dtype=np.uint8) for b, p in zip(batches, paths, strict=True)])
    labels = np.concatenate([np.asarray(_field(b, label_key, p), dtype=np.int64) for b, p in zip(batches, paths, strict=True)])
    names = np.concatenate([np.asarray(_field(b, b"filenames", p)) for b, p in zip(batches, paths, strict=True)])
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32))),
        labels=torch.from_numpy(labels),
        classes=classes,
        names=tuple(np.char.decode(names, "utf-8").tolist()),
    )


def _unpickle(path: Path) -> dict:
    """`encoding="bytes"` because the files are Python 2 pickles: keys and names come back as bytes."""
    try:
        with path.open("rb") as stream:
            content = _ArraysOnlyUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise _not_official(path, str(err)) from None
    if not isinstance(content, dict):
        raise _not_official(path, "no dict inside")
    return content


def _not_official(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not an official CIFAR file ({why}): delete it and run `featdiff data download`")


def _field(content: dict, key: bytes, path: Path) -> Any:
    if key not in content:
        raise UserError(f"{path} lacks the field {key.decode()}: delete it and run `featdiff data download`")
    return content[key]
