"""Retraining a linear classifier on fixed feature vectors (LDMLR's stage 3), with cross-entropy,
the logit-adjusted loss or LDAM's margin loss, on raw or L2-normalised features.

Features live on the compute device as one tensor and are batched by index, so an epoch is a few
matrix multiplies rather than a DataLoader walk; a fill too large for memory stays a memory-mapped
file, read batch by batch (`StackedRows` puts it after the real features without copying either;
`SelectedRows` keeps the rows a filter kept without copying them). Moving either table to a device
moves only the batches it gives: its parts stay in host memory (a mapped fill on disk), so a fill
larger than the accelerator's memory still trains there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featdiff.config import ClassifierConfig
from featdiff.models.heads import NormalizedLinear
from featdiff.training.loop import apply_update, run_steps
from featdiff.training.state import ShuffledBatches, TrainState


class StackedRows:
    """Several (N_i, D) tensors read as one (ΣN_i, D) table without being concatenated: the real
    features in memory and a memory-mapped fill of pseudo-features, say. Indexing gathers a
    batch's rows from each part, so the table is never held in memory at once. Batches come out on
    `device` (the first part's unless moved with `to`); the parts stay where they are."""

    def __init__(self, *parts: Tensor | SelectedRows, device: torch.device | None = None) -> None:
        if not parts or any(part.ndim != 2 or part.shape[1] != parts[0].shape[1] for part in parts):
            raise ValueError(f"StackedRows needs (N_i, D) tensors of one D, got {[tuple(part.shape) for part in parts]}")
        self.parts = parts
        self.starts = torch.tensor([0, *torch.tensor([len(part) for part in parts]).cumsum(0).tolist()])
        self.device = torch.device(device) if device is not None else parts[0].device

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.parts[0].shape[1]))

    def to(self, device: torch.device) -> StackedRows:
        return StackedRows(*self.parts, device=device)

    def __getitem__(self, index: Tensor | slice) -> Tensor:
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = index.cpu()
        host = self.parts[0].device
        rows = torch.empty((len(index), self.shape[1]), dtype=self.parts[0].dtype, device=host)
        part_of = torch.bucketize(index, self.starts[1:], right=True)
        for number, part in enumerate(self.parts):
            mine = part_of == number
            if bool(mine.any()):
                rows[mine.to(host)] = part[(index[mine] - self.starts[number]).to(part.device)].to(host)
        return rows.to(self.device)


class SelectedRows:
    """The rows `index` of an (N, D) table read as one (len(index), D) table without being gathered:
    the pseudo-features a filter kept from a memory-mapped fill, say. Indexing gathers a batch, on
    `device` (the table's unless moved with `to`); the table stays where it is."""

    def __init__(self, table: Tensor, index: Tensor, device: torch.device | None = None) -> None:
        if table.ndim != 2:
            raise ValueError(f"SelectedRows needs an (N, D) table, got {tuple(table.shape)}")
        self.table, self.index = table, index.cpu()
        self.ndim, self.dtype = 2, table.dtype
        self.device = torch.device(device) if device is not None else table.device

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), self.table.shape[1]))

    def to(self, device: torch.device) -> SelectedRows:
        return SelectedRows(self.table, self.index, device=device)

    def __getitem__(self, index: Tensor | slice) -> Tensor:
        return self.table[self.index[index.cpu() if isinstance(index, Tensor) else index].to(self.table.device)].to(self.device)


@dataclass
class WeightedFeatures:
    """Training examples for the classifier: real features (weight 1) and pseudo ones (weight w)."""

    features: torch.Tensor | StackedRows | SelectedRows
    labels: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean, so a pseudo weight below 1 lowers pseudo-features' share of the gradient."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def class_mass(data: WeightedFeatures, num_classes: int) -> Tensor:
    """Each class's total weight in `data` (float64, (C,)): its real count plus its pseudo-features' weight."""
    return torch.zeros(num_classes, dtype=torch.float64).index_add_(0, data.labels.cpu(), data.weights.cpu().double())


def _log_prior(mass: Tensor) -> Tensor:
    # A class absent from the training set gets a tiny prior instead of log 0 = -inf.
    prior = mass.clamp_min(1e-12)
    return torch.log(prior / prior.sum())


@dataclass(frozen=True)
class ClassifierLoss:
    """The loss of `config.loss` for a training set with class mass π: cross-entropy of
    logits + `offsets` (τ·log π for the logit-adjusted loss) with `margins[y]` taken off the true
    class's logit (LDAM's Δ_y for the margin loss); both are zero for plain cross-entropy."""

    offsets: Tensor
    margins: Tensor

    @classmethod
    def of(cls, config: ClassifierConfig, mass: Tensor) -> ClassifierLoss:
        zeros = torch.zeros_like(mass, dtype=torch.float32)
        if config.loss == "logit_adjusted":
            return cls(offsets=(config.loss_tau * _log_prior(mass)).float(), margins=zeros)
        if config.loss == "margin":
            inverse_root = mass.clamp_min(1e-12) ** -0.25
            return cls(offsets=zeros, margins=(config.margin * inverse_root / inverse_root.max()).float())
        return cls(offsets=zeros, margins=zeros)

    def to(self, device: torch.device) -> ClassifierLoss:
        return ClassifierLoss(self.offsets.to(device), self.margins.to(device))

    def __call__(self, logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        shifted = logits + self.offsets - F.one_hot(labels, logits.shape[1]) * self.margins[labels, None]
        return weighted_cross_entropy(shifted, labels, weights)


def trained_prior(config: ClassifierConfig, mass: Tensor) -> Tensor:
    """The prior a head trained with `config` on class mass π predicts under, for the post-hoc
    adjusted evaluation: π itself for cross-entropy and the margin loss, π^(1−τ) for the
    logit-adjusted loss (uniform at τ = 1, which is what that loss removes)."""
    prior = mass.clamp_min(1e-12)
    if config.loss == "logit_adjusted":
        prior = prior ** (1.0 - config.loss_tau)
    return prior / prior.sum()


def classifier_head(fc: nn.Linear, config: ClassifierConfig) -> nn.Module:
    """The module trained and evaluated: `fc` itself, or `fc` on normalised features."""
    return NormalizedLinear(fc) if config.normalize else fc


def make_classifier_optimizer(classifier: nn.Module, config: ClassifierConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def classifier_state(classifier: nn.Module, size: int, config: ClassifierConfig, generator: torch.Generator) -> TrainState:
    return TrainState(
        model=classifier,
        optimizers={"classifier": make_classifier_optimizer(classifier, config)},
        generators={"data": generator},
        batches=ShuffledBatches(size, config.batch_size, generator),
    )


def train_classifier(
    state: TrainState,
    data: WeightedFeatures,
    config: ClassifierConfig,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every_epochs: int = 50,
    desc: str = "classifier",
) -> list[float]:
    """Train for exactly `config.epochs` epochs and return the per-epoch mean loss.

    The final epoch's weights are what gets evaluated: no epoch is selected on any held-out set.
    """
    classifier = state.model
    device = next(classifier.parameters()).device
    features, labels, weights = (t.to(device) for t in (data.features, data.labels, data.weights))
    optimizer = state.optimizers["classifier"]
    with torch.no_grad():
        num_classes = classifier(features[:1]).shape[1]
    loss_of = ClassifierLoss.of(config, class_mass(data, num_classes)).to(device)

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        index = index.to(device)
        loss = loss_of(classifier(features[index]), labels[index], weights[index])
        apply_update(loss, optimizer)
        return {"loss": loss.detach()}

    run_steps(
        state,
        config.epochs * state.batches.steps_per_epoch,
        step,
        checkpoint=checkpoint,
        checkpoint_every_epochs=checkpoint_every_epochs,
        log_every=10**9,
        desc=desc,
    )
    return [entry["loss"] for entry in state.history]
