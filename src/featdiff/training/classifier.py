"""Retraining a linear classifier on fixed feature vectors (LDMLR's stage 3).

Features live on the compute device as one tensor and are batched by index, so an epoch is a few
matrix multiplies rather than a DataLoader walk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featdiff.config import ClassifierConfig
from featdiff.training.loop import apply_update, run_steps
from featdiff.training.state import ShuffledBatches, TrainState


@dataclass
class WeightedFeatures:
    """Training examples for the classifier: real features (weight 1) and pseudo ones (weight w)."""

    features: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean, so a pseudo weight below 1 lowers pseudo-features' share of the gradient."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


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

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        index = index.to(device)
        loss = weighted_cross_entropy(classifier(features[index]), labels[index], weights[index])
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
