"""The linear head's local training, on the training core's classifier state and loop.

With the logit-adjusted loss (Menon et al., ICLR 2021) a client trains head(x) + log π_k, π_k
its own class prior: the prior absorbs the client's skew, so the head itself learns balanced
scores and FedAvg averages heads that agree on what a logit means. Classes a client lacks get
log π = log(1e-12), so the client never pushes their rows down.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from featdiff.config import ClassifierConfig
from featdiff.training.classifier import WeightedFeatures, classifier_state, train_classifier

MISSING_CLASS_PRIOR = 1e-12


class PriorShifted(nn.Module):
    """head(x) + log prior: trains `head` under the logit-adjusted loss."""

    def __init__(self, head: nn.Linear, prior: Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("log_prior", prior.clamp_min(MISSING_CLASS_PRIOR).log())

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features) + self.log_prior


def train_head(
    head: nn.Linear,
    features: Tensor,
    labels: Tensor,
    config: ClassifierConfig,
    generator: torch.Generator,
    *,
    logit_adjusted: bool,
    weights: Tensor | None = None,
) -> float:
    """`config.epochs` epochs of `head` on (features, labels) in place; the last epoch's mean loss."""
    if logit_adjusted:
        counts = torch.bincount(labels, minlength=head.out_features).double()
        module: nn.Module = PriorShifted(head, (counts / counts.sum()).float())
    else:
        module = head
    data = WeightedFeatures(features, labels, torch.ones(len(labels)) if weights is None else weights)
    local = config.model_copy(update={"batch_size": min(config.batch_size, len(labels))})
    history = train_classifier(classifier_state(module, len(labels), local, generator), data, local, desc="head")
    return history[-1]
