"""The one in-memory form every dataset takes, so loaders, splits and models share a contract.

Images stay uint8 NCHW until the last moment: that is 4x smaller than float32, it is what the
packed and official files hold, and augmentation works on it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A labelled image collection; `eq=False` because element-wise tensor equality has no truth value."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Fail at construction, where the mistake is, rather than deep inside a training step.
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.names is not None and len(self.names) != len(self.labels):
            raise ValueError(f"{len(self.names)} names for {len(self.labels)} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> torch.Tensor:
        """Counts for every class, absent ones included, so index c is always class c."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """Rows picked by an integer index or a boolean mask, in the index's order."""
        names = None
        if self.names is not None:
            names = tuple(np.asarray(self.names, dtype=str)[index.cpu().numpy()].tolist())
        return ImageSet(self.images[index], self.labels[index], self.classes, names)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes, self.names)
