"""Test-set metrics as LDMLR reports them, plus the calibration it computed but never reported.

All numbers come from logits and labels alone, so the same code scores the shipped encoders, our
retrained classifiers and any ablation. Results are plain Python (percent accuracies, `None` for an
empty group) so that a summary can be written to JSON as is.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

GroupRule = Literal["shots", "index"]

MANY_SHOT_MIN = 100
FEW_SHOT_BELOW = 20


def group_masks(train_counts: torch.Tensor, rule: GroupRule) -> dict[str, torch.Tensor]:
    """Boolean (C,) class masks for the three groups of a long-tailed split.

    "shots" is LDMLR's metric split by *training* count (model/metrics.py): many ≥ 100,
    medium 20–99, few < 20; keys many/medium/few.
    "index" is LDMLR's generation split (`--generation_mmf`) by class index: the class range cut
    into thirds with the remainder going to the earlier groups (`torch.tensor_split`), i.e.
    0–3 / 4–6 / 7–9 for CIFAR-10 and 0–33 / 34–66 / 67–99 for CIFAR-100; keys head/mid/tail.
    The two splits differ (ldmlr.md §2.3, §6.9), so both are named explicitly.
    """
    if rule == "shots":
        return {
            "many": train_counts >= MANY_SHOT_MIN,
            "medium": (train_counts >= FEW_SHOT_BELOW) & (train_counts < MANY_SHOT_MIN),
            "few": train_counts < FEW_SHOT_BELOW,
        }
    if rule == "index":
        num_classes = train_counts.numel()
        masks = {}
        for name, members in zip(("head", "mid", "tail"), torch.tensor_split(torch.arange(num_classes), 3), strict=True):
            mask = torch.zeros(num_classes, dtype=torch.bool)
            mask[members] = True
            masks[name] = mask
        return masks
    raise ValueError(f"unknown group rule {rule!r}: use 'shots' or 'index'")


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Fraction correct per true class (float64, (C,)); NaN for a class with no test samples."""
    labels = labels.cpu()
    correct = pred.cpu() == labels
    totals = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels[correct], minlength=num_classes).double()
    return hits / totals


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE in [0, 1]: Σ_b (n_b / N)·|acc_b − conf_b| over equal-width confidence bins (lo, hi].

    Confidence is the top probability and accuracy whether its class is right (Guo et al. 2017).
    The weighted per-bin gap equals |Σ_b correct − Σ_b confidence| / N, which needs only sums.
    """
    probs = probs.detach().cpu().double()
    confidence, pred = probs.max(dim=1)
    correct = (pred == labels.cpu()).double()
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(confidence, inner_edges, right=False)
    gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct - confidence)
    return float(gap.abs().sum() / labels.numel())


def logit_adjust(logits: torch.Tensor, class_prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """logits − τ·log(prior): post-hoc compensation for a training prior, towards a uniform one.

    With τ = 1 the softmax of the result is softmax(logits)/prior renormalised, which is LDMLR's
    "label shift" (LSC, model/label_shift_est.py). `class_prior` may be raw counts: the
    normalisation only shifts all logits by a constant.
    """
    prior = class_prior.to(device=logits.device, dtype=torch.float64)
    if not bool((prior > 0).all()):
        raise ValueError("class_prior must be positive for every class: a class never trained on has no prior to divide by")
    log_prior = torch.log(prior / prior.sum())
    return (logits.double() - tau * log_prior).to(logits.dtype)


def summarize(
    logits: torch.Tensor,
    labels: torch.Tensor,
    train_counts: torch.Tensor,
    prior: torch.Tensor | None = None,
    index_groups: bool = False,
) -> dict:
    """Top-1 overall and per group, per class, and ECE, for plain and logit-adjusted predictions.

    Groups are always LDMLR's many/medium/few by `train_counts`; `prior` is the class prior of the
    set the classifier was trained on (default: `train_counts` normalised; pass real + pseudo
    counts for a classifier retrained with pseudo-features). Accuracies are in percent; a group
    accuracy is the mean over the test samples of its classes, `None` when it has none. ECE is a
    fraction in [0, 1], of the softmax of the plain or the adjusted logits.
    """
    logits, labels, train_counts = logits.detach().cpu(), labels.cpu(), train_counts.cpu()
    num_classes = logits.shape[1]
    if train_counts.numel() != num_classes:
        # LDMLR silently used the wrong count list when --imb_factor did not match the data (ldmlr.md §5).
        raise ValueError(f"{train_counts.numel()} class counts for {num_classes}-class logits")
    adjusted = logit_adjust(logits, train_counts if prior is None else prior.cpu())
    shots = group_masks(train_counts, "shots")
    summary: dict = {}
    for suffix, scores in (("", logits), ("_adjusted", adjusted)):
        pred = scores.argmax(dim=1)
        correct = pred == labels
        summary[f"acc{suffix}"] = {"overall": _percent(correct), **_group_accuracies(correct, labels, shots)}
        summary[f"per_class{suffix}"] = [_maybe(100.0 * a) for a in per_class_accuracy(pred, labels, num_classes).tolist()]
        summary[f"ece{suffix}"] = expected_calibration_error(torch.softmax(scores.double(), dim=1), labels)
        if index_groups:
            summary[f"acc_index{suffix}"] = _group_accuracies(correct, labels, group_masks(train_counts, "index"))
    return summary


def accuracy_by_group(logits: torch.Tensor, labels: torch.Tensor, train_counts: torch.Tensor, *, index_groups: bool = False) -> dict:
    """Top-1 % of `logits` overall and per many/medium/few group (`acc`), and per index group
    (`acc_index`) when asked: the accuracies of `summarize` without per-class lists or ECE."""
    correct = logits.detach().cpu().argmax(dim=1) == labels.cpu()
    labels, train_counts = labels.cpu(), train_counts.cpu()
    result = {"acc": {"overall": _percent(correct), **_group_accuracies(correct, labels, group_masks(train_counts, "shots"))}}
    if index_groups:
        result["acc_index"] = _group_accuracies(correct, labels, group_masks(train_counts, "index"))
    return result


def _group_accuracies(correct: torch.Tensor, labels: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, float | None]:
    return {name: _percent(correct[mask[labels]]) for name, mask in masks.items()}


def _percent(correct: torch.Tensor) -> float | None:
    return None if correct.numel() == 0 else 100.0 * float(correct.double().mean())


def _maybe(value: float) -> float | None:
    return None if math.isnan(value) else value
