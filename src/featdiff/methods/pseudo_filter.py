"""DiffuLT's AID/OOD filter for pseudo-features, in feature space.

DiffuLT found that generated samples slightly outside their class's real distribution ("AID")
help most, those inside it ("ID") less, and those far outside ("OOD") hurt. The test is a
distance to the class prototype measured in units of the class's real radius; featdiff applies it
to pseudo-features directly (DiffuLT generates images and measures their classifier features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from featdiff.config import PseudoFilterConfig

ID, AID, OOD = 0, 1, 2
BAND_NAMES = ("id", "aid", "ood")


@dataclass(frozen=True)
class ClassGeometry:
    """Per-class prototype μ_y (C, D) and radius r_y (C,) of the real features."""

    prototypes: Tensor
    radii: Tensor

    @classmethod
    def of(cls, features: Tensor, labels: Tensor, num_classes: int, radius: str = "max") -> ClassGeometry:
        counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(features.dtype)
        sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
        prototypes = sums / counts[:, None]
        distances = (features - prototypes[labels]).norm(dim=1)
        if radius == "max":
            radii = torch.zeros(num_classes, dtype=features.dtype).scatter_reduce_(0, labels, distances, reduce="amax", include_self=False)
        elif radius == "rms":
            radii = (torch.zeros(num_classes, dtype=features.dtype).index_add_(0, labels, distances.square()) / counts).sqrt()
        else:
            raise ValueError(f"unknown radius {radius!r}; expected 'max' or 'rms'")
        return cls(prototypes, radii)


def distance_ratios(features: Tensor, labels: Tensor, geometry: ClassGeometry) -> Tensor:
    """‖z − μ_y‖ / r_y per sample."""
    distances = (features - geometry.prototypes[labels].to(features)).norm(dim=1)
    return distances / geometry.radii[labels].to(features).clamp_min(1e-12)


def bands(ratios: Tensor, id_edge: float, aid_edge: float) -> Tensor:
    """0 (ID) for ratio ≤ id_edge, 1 (AID) for ≤ aid_edge, else 2 (OOD)."""
    return (ratios > id_edge).long() + (ratios > aid_edge).long()


def band_weights(features: Tensor, labels: Tensor, geometry: ClassGeometry, config: PseudoFilterConfig) -> tuple[Tensor, Tensor]:
    """Per-sample loss multipliers from each sample's band, and the bands themselves."""
    band = bands(distance_ratios(features, labels, geometry), config.id_edge, config.aid_edge)
    table = torch.tensor([config.id_weight, config.aid_weight, config.ood_weight], dtype=features.dtype, device=features.device)
    return table[band], band


def band_fractions(band: Tensor) -> dict[str, float]:
    counts = torch.bincount(band, minlength=3).double()
    total = max(float(counts.sum()), 1.0)
    return {name: float(count) / total for name, count in zip(BAND_NAMES, counts, strict=True)}
