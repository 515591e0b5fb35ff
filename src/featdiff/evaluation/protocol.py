"""The validation protocol: every choice on a validation part of the test set, every table on the rest.

The shipped encoders memorised their training images (a tail class's training features are far
tighter than its test features), so a split of the training data does not tell how a choice fares
on unseen images. Instead each class's test images are split, once and for all, into a
validation part (`evaluation.validation_fraction`, 20 % by default) and a disjoint report part,
like ImageNet-LT's balanced validation set. Knobs (logit adjustment's τ, a generator's spread,
the classifier's loss, ...) are chosen on the validation part; tables report the report part.

The split depends only on the test labels and `evaluation.validation_seed` (fixed by default, not
the run's seed), so every run, method and seed of a dataset sees the same two parts. Nothing that
chooses may read the report part: `choose_tau` takes validation logits only, and
`evaluation.shuffle_report_labels` permutes the report part's labels so that a reviewer can check
that every choice and every validation number stays the same.

A retrained head can also be read `blended` with the encoder's own (shipped) head: the two heads'
log-probabilities mixed with a weight w, then logit-adjusted, (w, τ) chosen together on the
validation part. That is an ensemble of two classifiers, not generation: the table that reports
a blended generator reports the blended real-only heads of the same run beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from featdiff.evaluation.metrics import accuracy_by_group, logit_adjust, summarize
from featdiff.seeding import named_generator

TAU_GRID = tuple(round(-1.0 + 0.1 * i, 1) for i in range(41))
"""Candidate τ of the tuned logit adjustment, -1.0 to 3.0 in steps of 0.1."""

BLEND_GRID = tuple(round(0.1 * i, 1) for i in range(11))
"""Candidate weights w of a head blended with the encoder's head, 0 (the encoder's head alone) to 1
(the head alone) in steps of 0.1."""

SPLIT_STREAM = "evaluation/validation-split"
SHUFFLE_STREAM = "evaluation/shuffled-report-labels"


@dataclass(frozen=True)
class TestParts:
    """Row indices of the test set's validation and report parts (disjoint, sorted, together all
    rows), and the report labels to score against (the true ones, or a seeded permutation of them
    when the run checks that nothing reads them)."""

    validation: Tensor
    report: Tensor
    shuffle_report_labels: bool = False
    seed: int = 0

    def report_labels(self, labels: Tensor) -> Tensor:
        report = labels[self.report]
        if not self.shuffle_report_labels:
            return report
        return report[torch.randperm(len(report), generator=named_generator(self.seed, SHUFFLE_STREAM))]


def split_test_set(labels: Tensor, fraction: float, seed: int, *, shuffle_report_labels: bool = False) -> TestParts:
    """round(fraction·n_c) of every class's test rows (at least one, and at least one left) go to
    the validation part, drawn from one seeded stream class by class; the rest is the report part."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = labels.cpu()
    generator = named_generator(seed, SPLIT_STREAM)
    validation, report = [], []
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_val = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        validation.append(rows[:n_val])
        report.append(rows[n_val:])
    return TestParts(
        torch.cat(validation).sort().values, torch.cat(report).sort().values, shuffle_report_labels=shuffle_report_labels, seed=seed
    )


def choose_tau(validation_logits: Tensor, validation_labels: Tensor, real_counts: Tensor, grid: tuple[float, ...] = TAU_GRID) -> float:
    """The τ of logits − τ·log(real prior) with the best validation accuracy; ties go to the
    smallest |τ| (the least adjustment), then the smaller τ.

    The prior is the real training data's whatever the classifier was trained on: τ = 1 is the
    classic adjustment of a classifier trained on real data, and τ = 0 a balanced classifier's
    plain prediction. Only validation rows enter, by construction of the signature."""
    best: tuple[float, float, float] | None = None
    labels = validation_labels.cpu()
    for tau in grid:
        correct = float((logit_adjust(validation_logits, real_counts, tau).argmax(dim=1).cpu() == labels).double().mean())
        key = (correct, -abs(tau), -tau)
        if best is None or key > best:
            best = key
    assert best is not None
    return -best[2]


def blend(head_logits: Tensor, encoder_logits: Tensor, weight: float) -> Tensor:
    """(1 − w)·log softmax(encoder's logits) + w·log softmax(head's logits): a product of the two
    heads' posteriors, each raised to its weight (log-probabilities, so neither head's logit
    scale decides the mix)."""
    return (1.0 - weight) * torch.log_softmax(encoder_logits.double(), dim=1) + weight * torch.log_softmax(head_logits.double(), dim=1)


def choose_blend(
    head_logits: Tensor,
    encoder_logits: Tensor,
    validation_labels: Tensor,
    real_counts: Tensor,
    weights: tuple[float, ...] = BLEND_GRID,
) -> tuple[float, float]:
    """The (w, τ) of `blend` then logits − τ·log(real prior) with the best validation accuracy,
    τ chosen per w by `choose_tau`; ties go to the larger w (the head under evaluation), then as
    `choose_tau`'s. Validation rows only, by construction of the signature."""
    labels = validation_labels.cpu()
    best: tuple[float, float, float] | None = None
    for weight in weights:
        mixed = blend(head_logits.cpu(), encoder_logits.cpu(), weight)
        tau = choose_tau(mixed, labels, real_counts)
        correct = float((logit_adjust(mixed, real_counts, tau).argmax(dim=1) == labels).double().mean())
        key = (correct, weight, tau)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    return best[1], best[2]


def blended_summaries(
    logits: Tensor, encoder_logits: Tensor, labels: Tensor, parts: TestParts, real_counts: Tensor, *, index_groups: bool
) -> dict:
    """`blended`: the weight and τ `choose_blend` picks on the validation part, with the
    accuracies the blend gives on both parts."""
    logits, encoder_logits, labels, real_counts = logits.detach().cpu(), encoder_logits.cpu(), labels.cpu(), real_counts.cpu()
    val, report = parts.validation, parts.report
    weight, tau = choose_blend(logits[val], encoder_logits[val], labels[val], real_counts)
    mixed = logit_adjust(blend(logits, encoder_logits, weight), real_counts, tau)
    return {
        "weight": weight,
        "tau": tau,
        "validation": accuracy_by_group(mixed[val], labels[val], real_counts, index_groups=index_groups),
        "report": accuracy_by_group(mixed[report], parts.report_labels(labels), real_counts, index_groups=index_groups),
    }


def part_summaries(
    logits: Tensor,
    labels: Tensor,
    parts: TestParts,
    real_counts: Tensor,
    *,
    prior: Tensor | None,
    index_groups: bool,
    adjust_counts: Tensor | None = None,
) -> dict:
    """`validation` and `report` summaries (plain and adjusted by the training prior, as
    `summarize`; groups by `real_counts`), and `tuned`: the τ chosen on the validation part with
    the accuracies it gives on both parts. The tuned adjustment divides by the prior of
    `adjust_counts` (default `real_counts`): a private head passes its released counts, so its
    predictions never use the true ones."""
    logits, labels = logits.detach().cpu(), labels.cpu()
    real_counts = real_counts.cpu()
    adjust = real_counts if adjust_counts is None else adjust_counts.cpu()
    val_logits, val_labels = logits[parts.validation], labels[parts.validation]
    report_logits, report_labels = logits[parts.report], parts.report_labels(labels)
    tau = choose_tau(val_logits, val_labels, adjust)
    summary_args = {"prior": prior, "index_groups": index_groups}
    return {
        "validation": summarize(val_logits, val_labels, real_counts, **summary_args),
        "report": summarize(report_logits, report_labels, real_counts, **summary_args),
        "tuned": {
            "tau": tau,
            "validation": accuracy_by_group(logit_adjust(val_logits, adjust, tau), val_labels, real_counts, index_groups=index_groups),
            "report": accuracy_by_group(logit_adjust(report_logits, adjust, tau), report_labels, real_counts, index_groups=index_groups),
        },
    }
