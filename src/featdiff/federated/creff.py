"""CReFF's federated features (Shang et al., IJCAI 2022): a balanced classifier head without sharing features.

Under long-tailed, heterogeneous clients the FedAvg head is biased toward head classes, and the server
cannot re-train it on real features it never sees. Clients instead upload, per class, the gradient of
the global head's mean cross-entropy on their real features; the count-weighted average over clients is
exactly the gradient on the pooled features of that class. The server then learns a few synthetic
features per class whose gradients point the same way (a cosine distance per output row, so a class's
direction counts and its size does not) and re-trains the head on them, equally many per class.

A linear head's gradient has a closed form, (softmax − onehot) ⊗ [x, 1], so it is computed directly
rather than by autograd on the head: no per-class backward passes, nothing accumulates in the head's
.grad, and the result stays differentiable in the features, which is what the server optimises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def class_gradients(head: nn.Linear, features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(C, C*(D+1)) gradients of each class's mean cross-entropy w.r.t. [weight | bias], flattened row-major
    as the C×(D+1) matrix [W | b], zero rows for classes absent from `labels`; and the (C,) counts.

    The head's parameters are detached: a client reads the global head, it does not train it here, and
    the server needs the gradient's dependence on the features only."""
    if head.out_features != num_classes:
        raise ValueError(f"the head has {head.out_features} outputs but num_classes is {num_classes}")
    logits = F.linear(features, head.weight.detach(), head.bias.detach())
    residual = logits.softmax(dim=1) - F.one_hot(labels, num_classes).to(logits.dtype)
    augmented = torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)
    # Per class, residualᵀ·[x, 1] over its rows: rows grouped by class into zero-padded blocks, then one
    # batched matmul (N·C·(D+1) work, no (N, C, D+1) outer-product tensor).
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(labels, stable=True)
    grouped = labels[order]
    position = torch.arange(len(labels), device=labels.device) - (torch.cumsum(counts, 0) - counts)[grouped]
    width = int(counts.max()) if len(labels) else 0
    residual_blocks = residual.new_zeros(num_classes, width, num_classes).index_put((grouped, position), residual[order])
    input_blocks = augmented.new_zeros(num_classes, width, augmented.shape[1]).index_put((grouped, position), augmented[order])
    sums = torch.bmm(residual_blocks.transpose(1, 2), input_blocks).flatten(1)
    return sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype), counts


def average_class_gradients(gradients: Sequence[Tensor], counts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Count-weighted mean per class over clients, and the summed counts; classes nobody holds stay zero.

    Weighting by counts makes the average the gradient of the pooled class mean, as if the server held
    every client's features of that class."""
    if not gradients or len(gradients) != len(counts):
        raise ValueError(f"need one count vector per gradient, got {len(gradients)} gradients and {len(counts)} count vectors")
    stacked = torch.stack(list(gradients))
    weights = torch.stack(list(counts)).to(stacked.dtype)
    total = torch.stack(list(counts)).sum(dim=0)
    averaged = (weights.unsqueeze(2) * stacked).sum(dim=0) / weights.sum(dim=0).clamp_min(1).unsqueeze(1)
    return averaged, total


def matching_distance(synthetic: Tensor, real: Tensor, present: Tensor, num_classes: int, eps: float = 1e-12) -> Tensor:
    """CReFF's distance summed over present classes: Σ_c Σ_rows (1 − cos(row_syn, row_real)); inputs (C, C*(D+1)).

    Rows are compared separately because each output row of the head is pushed by its own class's
    residual; `eps` keeps a zero row (cosine taken as 0) finite and differentiable."""
    rows_synthetic = F.normalize(synthetic[present].reshape(-1, num_classes, synthetic.shape[1] // num_classes), dim=2, eps=eps)
    rows_real = F.normalize(real[present].reshape(-1, num_classes, real.shape[1] // num_classes), dim=2, eps=eps)
    return (1 - (rows_synthetic * rows_real).sum(dim=2)).sum()


def match_features(
    head: nn.Linear,
    features: Tensor,
    labels: Tensor,
    real_gradients: Tensor,
    present: Tensor,
    steps: int,
    lr: float,
    momentum: float = 0.5,
) -> Tensor:
    """`steps` SGD steps on a copy of `features` minimising matching_distance; returns the new features (detached).

    The head is read, never changed. Features of classes not in `present` get no gradient and so stay as
    they were."""
    num_classes = head.out_features
    synthetic = features.detach().clone().requires_grad_(True)
    target = real_gradients.detach()
    optimizer = torch.optim.SGD([synthetic], lr=lr, momentum=momentum)
    for _ in range(steps):
        optimizer.zero_grad()
        gradients, _ = class_gradients(head, synthetic, labels, num_classes)
        matching_distance(gradients, target, present, num_classes).backward()
        optimizer.step()
    return synthetic.detach()
