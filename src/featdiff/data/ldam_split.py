"""The LDAM-DRW long-tail protocol (Cao et al., 2019), the seeded rule most CIFAR-LT papers use.

LDMLR's published images were not drawn by it, but the class counts are the same, and this rule
is what any other dataset (or a re-draw with another seed) needs.
"""

from __future__ import annotations

import numpy as np
import torch

from featdiff.data.imageset import ImageSet
from featdiff.errors import UserError


def ldam_class_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """n_c = int(n_max · IF^(−c/(C−1))), written as LDAM's (1/IF)^(c/(C−1)) so the float rounding agrees."""
    check_imbalance_factor(imbalance_factor)
    if num_classes == 1:
        return [n_max]
    ratio = 1.0 / imbalance_factor
    return [int(n_max * ratio ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def ldam_split(train: ImageSet, imbalance_factor: float, seed: int = 0) -> ImageSet:
    """Per class in label order: shuffle its indices with one RandomState(seed), keep the first n_c.

    One RandomState consumed class after class reproduces LDAM's global `np.random.seed(seed)`
    followed by `np.random.shuffle` per class, without touching the global generator.
    n_max is the smallest class pool, so every class can supply its count.
    """
    check_imbalance_factor(imbalance_factor)
    labels = train.labels.cpu().numpy()
    pools = np.bincount(labels, minlength=train.num_classes)
    counts = ldam_class_counts(int(pools.min()), train.num_classes, imbalance_factor)
    rng = np.random.RandomState(seed)
    kept = []
    for label, count in enumerate(counts):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        kept.append(members[:count])
    return train.subset(torch.from_numpy(np.concatenate(kept)))


def check_imbalance_factor(imbalance_factor: float) -> None:
    """Separate so callers can reject a bad IF before loading any data."""
    if not imbalance_factor >= 1:
        raise UserError(f"imbalance factor must be >= 1 (head count / tail count), got {imbalance_factor}")
