"""The default dataset: scikit-learn's bundled 8x8 digits, made long-tailed.

It ships inside scikit-learn, so every command runs out of the box (no download, no data
folder) and end-to-end tests finish in seconds, on the same code path as CIFAR-LT.
"""

from __future__ import annotations

import numpy as np
import torch

from featdiff.data.imageset import ImageSet
from featdiff.data.ldam_split import check_imbalance_factor, ldam_split
from featdiff.errors import UserError

_DIGITS_MAX_VALUE = 16


def load_digits_lt(imbalance_factor: float = 10, test_fraction: float = 0.3, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(long-tailed train, test); the stratified test split is drawn first, so it keeps the near-uniform classes."""
    # Imported here, not at the top: scikit-learn (with SciPy) takes about a second to import, which
    # every featdiff command would otherwise pay whatever its dataset.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_imbalance_factor(imbalance_factor)
    if not 0 < test_fraction < 1:
        raise UserError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / _DIGITS_MAX_VALUE)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    pool_index, test_index = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    classes = tuple(str(digit) for digit in digits.target_names)
    names = tuple(index.astype(str).tolist())  # the position in load_digits(), to trace any image back
    everything = ImageSet(torch.from_numpy(pixels), torch.from_numpy(labels), classes, names)
    pool = everything.subset(torch.from_numpy(np.sort(pool_index)))
    test = everything.subset(torch.from_numpy(np.sort(test_index)))
    return ldam_split(pool, imbalance_factor, seed), test
