"""DiffuLT's AID/OOD filter for pseudo-features, in feature space.

DiffuLT found that generated samples slightly outside their class's real distribution ("AID")
help most, those inside it ("ID") less, and those far outside ("OOD") hurt. The test is a
distance to the class prototype measured in units of the class's real radius; featdiff applies it
to pseudo-features directly (DiffuLT generates images and measures their classifier features).
"""

from __future__ import annotations

import torch
from torch import Tensor

from featdiff.config import PseudoFilterConfig
from featdiff.statistics import ClassGeometry, bands, distance_ratios


def band_weights(
    features: Tensor, labels: Tensor, geometry: ClassGeometry, config: PseudoFilterConfig, chunk: int = 65_536
) -> tuple[Tensor, Tensor]:
    """Per-sample loss multipliers from each sample's band, and the bands themselves; `chunk` rows
    at a time, so that a memory-mapped fill is read through, never held."""
    band = torch.cat(
        [
            bands(
                distance_ratios(features[start : start + chunk], labels[start : start + chunk], geometry), config.id_edge, config.aid_edge
            )
            for start in range(0, len(labels), chunk)
        ]
        or [torch.zeros(0, dtype=torch.int64)]
    )
    table = torch.tensor([config.id_weight, config.aid_weight, config.ood_weight], dtype=features.dtype, device=band.device)
    return table[band], band
