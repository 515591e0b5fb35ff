"""Everything a run needs to know about its dataset, from one config section.

Bundles the train / train-holdout / test image sets with the constants that belong to the dataset
(normalisation, augmentation padding, which group rule to report), so methods stay dataset-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from featdiff.config import DataConfig
from featdiff.data.augment import CIFAR_MEAN, CIFAR_STD, normalize, random_crop_flip
from featdiff.data.cifar import load_cifar_lt
from featdiff.data.digits import load_digits_lt
from featdiff.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, load_image_folder
from featdiff.data.imageset import ImageSet

DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)


@dataclass(frozen=True)
class DatasetBundle:
    name: str
    train: ImageSet
    test: ImageSet
    train_holdout: ImageSet | None
    """Training images held out of training (`data.train_holdout_fraction`), or None."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    """Horizontal flips are label-preserving for CIFAR objects, not for handwritten digits."""
    index_groups: bool
    """CIFAR-10 also reports head/mid/tail index groups: at IF=100 it has no few-shot class."""

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def train_counts(self) -> torch.Tensor:
        """Training images per class (not per view: a class's count, whatever the feature views)."""
        return self.train.class_counts()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)

    def augmenter(self, padding: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        """Batched random crop with `padding`, plus horizontal flips where they keep the label."""

        def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return random_crop_flip(images, padding=padding, generator=generator, flip=self.flip)

        return augment


def split_train_holdout(train: ImageSet, fraction: float, generator: torch.Generator) -> tuple[ImageSet, ImageSet]:
    """Hold out round(fraction·n_c) images of every class (at least one stays in training)."""
    keep, held = [], []
    for c in range(train.num_classes):
        index = torch.nonzero(train.labels == c).flatten()
        index = index[torch.randperm(index.numel(), generator=generator)]
        n_val = min(round(fraction * index.numel()), index.numel() - 1)
        held.append(index[:n_val])
        keep.append(index[n_val:])
    return train.subset(torch.cat(keep).sort().values), train.subset(torch.cat(held).sort().values)


def load_dataset(config: DataConfig, seed: int = 0) -> DatasetBundle:
    name = config.dataset
    if config.source == "folder":
        train, test = load_image_folder(Path(config.root), config.image_size, train_list=config.train_list, test_list=config.test_list)
        mean, std, flip, name = IMAGENET_MEAN, IMAGENET_STD, True, Path(config.root).name
    elif config.dataset == "digits":
        train, test = load_digits_lt(imbalance_factor=config.imbalance_factor)
        mean, std, flip = DIGITS_MEAN, DIGITS_STD, False
    else:
        train, test = load_cifar_lt(config.dataset, config.imbalance_factor, Path(config.root), source=config.source)
        mean, std, flip = CIFAR_MEAN, CIFAR_STD, True
    train_holdout = None
    if config.train_holdout_fraction > 0:
        generator = torch.Generator().manual_seed(seed)
        train, train_holdout = split_train_holdout(train, config.train_holdout_fraction, generator)
    return DatasetBundle(
        name=name,
        train=train,
        test=test,
        train_holdout=train_holdout,
        mean=mean,
        std=std,
        flip=flip,
        index_groups=config.dataset == "cifar10" and config.source != "folder",
    )


@dataclass(frozen=True, eq=False)
class FeatureBundle:
    """What the feature-only methods need to know about a `data.source: features` dataset: no
    images, so no normalisation or augmentation, only its classes and training counts."""

    name: str
    classes: tuple[str, ...]
    train_counts: torch.Tensor
    index_groups: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)
