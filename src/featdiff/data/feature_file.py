"""Bring your own features: one file of training and test feature vectors from any encoder.

`data.source: features` with `data.features: PATH` runs every method that needs feature vectors
only (`fc_retrain`, `ldmlr`, `gaussian`, `ldmlr_dp`, `dp_linear`, `dp_gaussian`) on it, and
`federated.features` is the same format. The file is safetensors or `.npz` (read without pickle)
with `train_features` (N, D), `train_labels` (N,), `test_features` (M, D), `test_labels` (M,), any D
and any number of classes, and optionally the class names (safetensors: a JSON list in the
metadata key `class_names`; npz: a string array `class_names`). `featdiff encode` writes exactly
this format. Every problem is found when the file is read, in one line naming it and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featdiff.errors import UserError

KEYS = ("train_features", "train_labels", "test_features", "test_labels")
CLASS_NAMES = "class_names"


@dataclass(frozen=True, eq=False)
class FeatureFile:
    train_features: Tensor
    train_labels: Tensor
    test_features: Tensor
    test_labels: Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        return int(self.train_features.shape[1])


CHECK_ROWS = 65_536
"""Rows checked at a time, so checking a memory-mapped fill never holds a mask of all of it."""


def check_features(features: Tensor, labels: Tensor, *, where: str, num_classes: int | None = None) -> int:
    """The number of classes of (features, labels) tensors, after checking them as a features file
    is checked: (N, D) floating features and (N,) integer labels with N > 0, finite values,
    labels in 0..C−1 and, when C is not given, every class 0..max present. Problems are one
    UserError starting with `where`."""
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels) or len(labels) == 0:
        raise UserError(
            f"{where}: features of shape {tuple(features.shape)} and labels of shape {tuple(labels.shape)}; "
            "they must be (N, D) and (N,) with the same N > 0"
        )
    if not features.is_floating_point():
        raise UserError(f"{where}: features are {features.dtype}; pass floating-point features")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise UserError(f"{where}: labels are {labels.dtype}; pass integer class indices")
    bad = sum(int((~torch.isfinite(block)).sum()) for block in features.split(CHECK_ROWS))  # block by block: a mapped file stays on disk
    if bad:
        raise UserError(f"{where}: features hold NaN or infinite values ({bad} entries)")
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise UserError(f"{where}: labels run from {int(labels.min())} to {int(labels.max())}, outside 0..{classes - 1}")
    if num_classes is None:
        counts = torch.bincount(labels.long().cpu(), minlength=classes)
        if bool((counts == 0).any()):
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise UserError(f"{where}: no record of class {', '.join(map(str, empty[:5]))}; relabel the classes present as 0..C-1")
    return classes


def _read(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    if not path.is_file():
        raise UserError(f"data.features: {path} does not exist; write one with `featdiff encode` or from your own encoder (see README)")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError) as error:
            raise UserError(
                f"data.features: {path} is not a readable .npz without pickle ({error}); save plain arrays with numpy.savez"
            ) from None
        names = arrays.pop(CLASS_NAMES, None)
        return arrays, None if names is None else [str(n) for n in names.tolist()]
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as stored:
                arrays = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118 (safe_open has no iterator)
                metadata = stored.metadata() or {}
        except Exception as error:  # safetensors raises its own error types for damaged headers
            raise UserError(f"data.features: {path} is not a readable safetensors file ({type(error).__name__}: {error})") from None
        names = metadata.get(CLASS_NAMES)
        try:
            return arrays, None if names is None else [str(n) for n in json.loads(names)]
        except (ValueError, TypeError):
            raise UserError(f"data.features: {path}'s metadata '{CLASS_NAMES}' is not a JSON list of names") from None
    raise UserError(f"data.features: {path} must be a .safetensors or .npz file, got '{path.suffix or 'no suffix'}'")


def load_feature_file(path: Path | str) -> FeatureFile:
    """The file's features and labels, checked: keys, shapes, finite values, labels in range,
    every class with a training record."""
    path = Path(path)
    arrays, names = _read(path)
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        raise UserError(f"data.features: {path} lacks {', '.join(missing)}; it needs {', '.join(KEYS)} (and optionally {CLASS_NAMES})")
    for split in ("train", "test"):
        features, labels = arrays[f"{split}_features"], arrays[f"{split}_labels"]
        if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels) or len(labels) == 0:
            raise UserError(
                f"data.features: {path} has {split}_features of shape {features.shape} and {split}_labels of shape {labels.shape}; "
                "they must be (N, D) and (N,) with the same N > 0"
            )
        if not np.issubdtype(features.dtype, np.floating):
            raise UserError(f"data.features: {path}'s {split}_features are {features.dtype}; store floating-point features")
        if not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"data.features: {path}'s {split}_labels are {labels.dtype}; store integer class indices")
        if not np.isfinite(features).all():
            raise UserError(
                f"data.features: {path}'s {split}_features hold NaN or infinite values ({int((~np.isfinite(features)).sum())} entries)"
            )
    if arrays["train_features"].shape[1] != arrays["test_features"].shape[1]:
        raise UserError(
            f"data.features: {path}'s train_features have dimension {arrays['train_features'].shape[1]} but its test_features "
            f"{arrays['test_features'].shape[1]}; both must come from the same encoder layer"
        )
    largest = int(max(arrays["train_labels"].max(), arrays["test_labels"].max()))
    num_classes = len(names) if names is not None else largest + 1
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise UserError(
                f"data.features: {path}'s {split}_labels run from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1} "
                f"({'its ' + str(len(names)) + ' class names' if names is not None else 'the classes'})"
            )
    counts = np.bincount(arrays["train_labels"], minlength=num_classes)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0)
        shown = ", ".join(str(c) for c in empty[:5]) + (" …" if len(empty) > 5 else "")
        raise UserError(
            f"data.features: {path} has no training record of class {shown} ({len(empty)} classes); every class needs at least one "
            "(relabel the classes 0..C-1 that have training records)"
        )
    return FeatureFile(
        train_features=torch.from_numpy(np.ascontiguousarray(arrays["train_features"], dtype=np.float32)),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_features=torch.from_numpy(np.ascontiguousarray(arrays["test_features"], dtype=np.float32)),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        class_names=tuple(names) if names is not None else tuple(str(c) for c in range(num_classes)),
    )


def save_feature_file(path: Path, file: FeatureFile) -> None:
    """The format `load_feature_file` reads, as safetensors with the class names in its metadata (atomically)."""
    from featdiff.io import atomic_save_tensors

    tensors = {
        "train_features": file.train_features,
        "train_labels": file.train_labels,
        "test_features": file.test_features,
        "test_labels": file.test_labels,
    }
    atomic_save_tensors(path, tensors, metadata={CLASS_NAMES: json.dumps(list(file.class_names))})
