"""The progressive auxiliary bank: the server's pseudo-features, refreshed from well-scored models.

FedDDPM draws its auxiliary set once, from the warm-up models, and keeps it. featdiff refreshes
it: a class whose fresh pseudo-features (from the corrected global model, past the AID/OOD
filter) are closer to the federation's class statistics than the bank's rows of that class gets
them in place of its worst-scored rows (farthest from the class mean), at most a share r of the
class per refresh; an anchor share of the warm-up rows is never replaced. The anchor, the cap and
the per-class score are the brakes on a self-consuming loop (a model trained on its own samples
drifts and loses diversity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from featdiff.evaluation.diagnostics import frechet_distance
from featdiff.statistics import class_means_and_covariances


@dataclass(frozen=True)
class Bank:
    features: Tensor
    labels: Tensor
    born: Tensor
    """(N,) the round a row entered the bank (0: warm-up)."""
    anchor: Tensor
    """(N,) bool: warm-up rows that are never replaced."""

    @classmethod
    def start(cls, features: Tensor, labels: Tensor, anchor_share: float, generator: torch.Generator) -> Bank:
        """The warm-up set, with ⌈share·n_c⌉ random rows of every class c as anchors."""
        anchor = torch.zeros(len(labels), dtype=torch.bool)
        order = torch.randperm(len(labels), generator=generator)
        for c in labels.unique():
            rows = order[labels[order] == c]
            anchor[rows[: math.ceil(anchor_share * len(rows))]] = True
        return cls(features.clone(), labels.clone(), torch.zeros(len(labels), dtype=torch.long), anchor)

    def as_dict(self) -> dict[str, Tensor]:
        return {"features": self.features, "labels": self.labels, "born": self.born, "anchor": self.anchor}

    @classmethod
    def from_dict(cls, tensors: dict[str, Tensor]) -> Bank:
        return cls(tensors["features"], tensors["labels"], tensors["born"].long(), tensors["anchor"].bool())

    def mean_age(self, current_round: int) -> float:
        return float((current_round - self.born).float().mean())


def refresh(
    bank: Bank,
    candidates: Tensor,
    candidate_labels: Tensor,
    share: float,
    current_round: int,
    *,
    scores: Tensor | None = None,
) -> tuple[Bank, int]:
    """Replace, per class c of the candidates, non-anchor rows with candidates of class c: at
    most ⌊share·n_c⌋ of them, and no more than there are candidates. The rows go worst-scored
    first when `scores` (one per bank row, higher is worse) is given, oldest first among equals
    (and always without scores). Returns the bank and how many rows were replaced."""
    features, born = bank.features.clone(), bank.born.clone()
    replaced = 0
    for c in candidate_labels.unique().tolist():
        members = torch.nonzero(bank.labels == c).flatten()
        replaceable = members[~bank.anchor[members]]
        replaceable = replaceable[torch.argsort(born[replaceable], stable=True)]
        if scores is not None:
            replaceable = replaceable[torch.argsort(scores[replaceable], descending=True, stable=True)]
        fresh = candidates[candidate_labels == c]
        count = min(int(share * len(members)), len(replaceable), len(fresh))
        features[replaceable[:count]] = fresh[:count].to(features)
        born[replaceable[:count]] = current_round
        replaced += count
    return Bank(features, bank.labels, born, bank.anchor), replaced


def class_frechet(features: Tensor, labels: Tensor, means: Tensor, covariances: Tensor, present: Tensor) -> Tensor:
    """Per-class Fréchet distance (C,) of (features, labels) to reference moments (NaN where the
    class is absent from either side, or has fewer than two samples)."""
    num_classes = means.shape[0]
    sample_mean, sample_cov, mass = class_means_and_covariances(
        features.double(), labels, torch.ones(len(labels), dtype=torch.float64), num_classes
    )
    usable = present & (mass >= 2)
    distances = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    if bool(usable.any()):
        distances[usable] = frechet_distance(sample_mean[usable], sample_cov[usable], means[usable].double(), covariances[usable].double())
    return distances


def mean_ignoring_nan(values: Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if len(kept) else float("nan")
