import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix

from featdiff.evaluation.metrics import (
    expected_calibration_error,
    group_masks,
    logit_adjust,
    per_class_accuracy,
    summarize,
)


@pytest.fixture(scope="module")
def manifest(data_root):
    return json.loads((data_root / "MANIFEST.json").read_text())


@pytest.mark.parametrize(
    ("split", "sizes"),
    [  # ldmlr.md §2.3
        ("cifar10_lt_if100_train.npz", (8, 2, 0)),
        ("cifar10_lt_if10_train.npz", (10, 0, 0)),
        ("cifar100_lt_if100_train.npz", (35, 35, 30)),
        ("cifar100_lt_if10_train.npz", (70, 30, 0)),
    ],
)
def test_shot_groups_of_ldmlr_splits(manifest, split, sizes):
    masks = group_masks(torch.tensor(manifest[split]["per_class"]), "shots")
    assert tuple(int(masks[g].sum()) for g in ("many", "medium", "few")) == sizes
    assert torch.equal(masks["many"] ^ masks["medium"] ^ masks["few"], torch.ones(len(masks["many"]), dtype=torch.bool))


def test_shot_thresholds_at_the_boundaries():
    masks = group_masks(torch.tensor([100, 99, 20, 19]), "shots")
    assert masks["many"].tolist() == [True, False, False, False]
    assert masks["medium"].tolist() == [False, True, True, False]
    assert masks["few"].tolist() == [False, False, False, True]


@pytest.mark.parametrize(("num_classes", "ranges"), [(10, ((0, 4), (4, 7), (7, 10))), (100, ((0, 34), (34, 67), (67, 100)))])
def test_index_groups_are_ldmlr_generation_groups(num_classes, ranges):
    # ldmlr.md §1.3: CIFAR-10 0–3 / 4–6 / 7–9, CIFAR-100 0–33 / 34–66 / 67–99.
    masks = group_masks(torch.ones(num_classes), "index")
    for name, (lo, hi) in zip(("head", "mid", "tail"), ranges, strict=True):
        expected = torch.zeros(num_classes, dtype=torch.bool)
        expected[lo:hi] = True
        assert torch.equal(masks[name], expected)


def test_per_class_accuracy_matches_sklearn_confusion_diagonal():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 500)
    pred = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 6, 500))
    ours = per_class_accuracy(torch.from_numpy(pred), torch.from_numpy(labels), 6).numpy()
    cm = confusion_matrix(labels, pred, labels=range(6))
    np.testing.assert_allclose(ours, cm.diagonal() / cm.sum(axis=1))


def test_per_class_accuracy_is_nan_for_a_class_without_samples():
    acc = per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
    assert acc[:2].tolist() == [0.5, 1.0] and math.isnan(acc[2].item())


def test_ece_hand_computed():
    # 3 bins: (0, 1/3], (1/3, 2/3], (2/3, 1].
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1, 1])
    # confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (wrong), 0.7 (right)
    # bin 2: {0.9, 0.8, 0.7}, acc 2/3, conf 0.8 → 3/5 · |2/3 − 0.8|
    # bin 1: {0.6, 0.55},     acc 1/2, conf 0.575 → 2/5 · 0.075
    expected = 3 / 5 * abs(2 / 3 - 0.8) + 2 / 5 * 0.075
    assert expected_calibration_error(probs, labels, n_bins=3) == pytest.approx(expected, abs=1e-12)


def test_ece_matches_textbook_binning_loop():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, 400)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, 16)
    reference = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            reference += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels)) == pytest.approx(reference, abs=1e-12)


def test_logit_adjust_argmax_equals_label_shift_compensation():
    torch.manual_seed(0)
    logits = torch.randn(1000, 10) * 2
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.float64)
    prior = counts / counts.sum()
    compensated = torch.softmax(logits.double(), 1) / prior
    compensated = compensated / compensated.sum(1, keepdim=True)
    adjusted = logit_adjust(logits, counts)
    assert torch.equal(adjusted.argmax(1), compensated.argmax(1))
    assert torch.allclose(torch.softmax(adjusted.double(), 1), compensated, atol=1e-6)
    assert not torch.equal(adjusted.argmax(1), logits.argmax(1))
    assert torch.allclose(logit_adjust(logits, counts, tau=0.0), logits)


def test_summarize_against_sklearn_and_group_means():
    rng = np.random.default_rng(2)
    counts = torch.tensor([500, 150, 60, 30, 10, 5])  # many: 0,1  medium: 2,3  few: 4,5
    labels = np.repeat(np.arange(6), 50)
    logits = torch.from_numpy(rng.normal(size=(300, 6))).float()
    logits[torch.arange(300), torch.from_numpy(labels)] += 1.0
    summary = summarize(logits, torch.from_numpy(labels), counts, index_groups=True)

    pred = logits.argmax(1).numpy()
    assert summary["acc"]["overall"] == pytest.approx(100 * accuracy_score(labels, pred))
    cm = confusion_matrix(labels, pred)
    per_class = 100 * cm.diagonal() / cm.sum(1)
    assert summary["per_class"] == pytest.approx(per_class.tolist())
    assert summary["acc"]["many"] == pytest.approx(per_class[:2].mean())
    assert summary["acc"]["few"] == pytest.approx(per_class[4:].mean())
    assert summary["acc_index"]["head"] == pytest.approx(per_class[:2].mean())

    adjusted_pred = (logits.double() - torch.log(counts.double())).argmax(1).numpy()
    assert summary["acc_adjusted"]["overall"] == pytest.approx(100 * accuracy_score(labels, adjusted_pred))
    assert set(summary) == {
        "acc",
        "acc_adjusted",
        "per_class",
        "per_class_adjusted",
        "ece",
        "ece_adjusted",
        "acc_index",
        "acc_index_adjusted",
    }
    json.dumps(summary, allow_nan=False)


def test_summarize_uses_the_given_prior_and_reports_empty_groups_as_none():
    logits = torch.tensor([[2.0, 0.5], [2.0, 1.9], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    counts = torch.tensor([900, 300])  # both many-shot: medium and few are empty
    summary = summarize(logits, labels, counts, prior=torch.tensor([0.5, 0.5]))
    assert summary["acc"]["medium"] is None and summary["acc"]["few"] is None
    assert summary["acc_adjusted"] == summary["acc"]  # uniform prior: adjustment changes nothing
    assert summary["acc"]["overall"] == pytest.approx(100 * 2 / 3)  # row 1 is wrong
    skewed = summarize(logits, labels, counts)  # prior 3:1 adds log 3 ≈ 1.10 to class 1: row 1 flips
    assert skewed["acc_adjusted"]["overall"] == pytest.approx(100.0)


def test_summarize_per_class_is_none_for_an_absent_class():
    summary = summarize(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0]), torch.tensor([10, 10, 10]))
    assert summary["per_class"] == [100.0, None, None]
    json.dumps(summary, allow_nan=False)


def test_summarize_rejects_counts_for_another_number_of_classes():
    with pytest.raises(ValueError, match="10 class counts for 3-class logits"):
        summarize(torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(10))
