"""Retraining a linear classifier on fixed feature vectors (LDMLR's stage 3).

Features live on the compute device as one tensor and are batched by index, so an epoch is a few
matrix multiplies rather than a DataLoader walk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featdiff.config import ClassifierConfig
from featdiff.progress import progress


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


def classifier_step(
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = weighted_cross_entropy(classifier(features), labels, weights)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_classifier_optimizer(classifier: nn.Module, config: ClassifierConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def train_classifier(
    classifier: nn.Linear,
    data: WeightedFeatures,
    config: ClassifierConfig,
    generator: torch.Generator,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 50,
    desc: str = "classifier",
) -> list[float]:
    """Train for exactly `config.epochs` epochs and return the per-epoch mean loss.

    The final epoch's weights are what gets evaluated: no epoch is selected on any held-out set.
    """
    device = classifier.weight.device
    features, labels, weights = (t.to(device) for t in (data.features, data.labels, data.weights))
    optimizer = make_classifier_optimizer(classifier, config)
    start_epoch, history = 0, []
    if resume is not None:
        classifier.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        start_epoch, history = resume["epoch"], list(resume["history"])
    n = len(data)
    for epoch in progress(range(start_epoch, config.epochs), desc=desc, initial=start_epoch, total=config.epochs):
        order = torch.randperm(n, generator=generator, device=generator.device).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            total += classifier_step(classifier, optimizer, features[index], labels[index], weights[index]) * index.numel()
        history.append(float(total) / n)
        if checkpoint is not None and (epoch + 1) % checkpoint_every == 0 and epoch + 1 < config.epochs:
            checkpoint(
                {
                    "model": classifier.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                    "history": history,
                }
            )
    return history
