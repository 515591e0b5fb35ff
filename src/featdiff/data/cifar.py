"""One entry point for CIFAR-LT, whichever way the train images are obtained.

`ldmlr-packed` and `ldmlr-official` give the very same images (LDMLR's published split), so
results compare with LDMLR point for point; `ldam-official` is the common seeded protocol, for
comparing with the wider CIFAR-LT literature or for imbalance factors LDMLR never published.
The test set is always the full official one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from featdiff.data.imageset import ImageSet
from featdiff.data.ldam_split import check_imbalance_factor, ldam_split
from featdiff.data.ldmlr_split import LDMLR_DATASETS, check_published, ldmlr_split
from featdiff.data.official import load_official
from featdiff.data.packed import load_packed
from featdiff.errors import UserError

Source = Literal["ldmlr-packed", "ldmlr-official", "ldam-official"]
SOURCES: tuple[str, ...] = ("ldmlr-packed", "ldmlr-official", "ldam-official")


def load_cifar_lt(
    dataset: str,
    imbalance_factor: float,
    root: Path,
    source: Source = "ldmlr-packed",
    cache: Path | None = None,
) -> tuple[ImageSet, ImageSet]:
    """(train, test) for CIFAR-10/100-LT; `root` holds the packed files or the official download."""
    if dataset not in LDMLR_DATASETS:
        raise UserError(f"unknown dataset {dataset!r}: use one of {', '.join(LDMLR_DATASETS)}")
    root = Path(root)
    if source == "ldmlr-packed":
        published = check_published(dataset, imbalance_factor)
        train = load_packed(root / f"{dataset}_lt_if{published}_train.npz", cache)
        return train, load_packed(root / f"{dataset}_test.npz", cache)
    if source == "ldmlr-official":
        published = check_published(dataset, imbalance_factor)  # before reading 180 MB of pickles
        official_train, test = load_official(dataset, root)
        return ldmlr_split(official_train, dataset, published), test
    if source == "ldam-official":
        check_imbalance_factor(imbalance_factor)
        official_train, test = load_official(dataset, root)
        return ldam_split(official_train, imbalance_factor), test
    raise UserError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)}")
