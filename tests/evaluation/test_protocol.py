"""The validation protocol: a per-class, disjoint, deterministic split of the test set, τ chosen on
the validation part only, and runs whose every choice ignores the report part's labels."""

import numpy as np
import pytest
import torch

from featdiff.config import config_from_dict
from featdiff.evaluation.protocol import BLEND_GRID, TAU_GRID, blended_summaries, choose_blend, choose_tau, part_summaries, split_test_set
from featdiff.pipeline import execute
from featdiff.runs import Run


def _noise(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).double()


def _labels(counts):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(sum(counts), generator=torch.Generator().manual_seed(3))]


def test_the_split_is_per_class_disjoint_and_complete():
    counts = [1000, 400, 37, 5, 2]
    labels = _labels(counts)
    parts = split_test_set(labels, 0.2, seed=0)
    validation, report = set(parts.validation.tolist()), set(parts.report.tolist())
    assert not validation & report
    assert validation | report == set(range(len(labels)))
    for c, n in enumerate(counts):
        in_validation = int((labels[parts.validation] == c).sum())
        assert in_validation == min(max(round(0.2 * n), 1), n - 1)  # 200, 80, 7, 1, 1
        assert int((labels[parts.report] == c).sum()) == n - in_validation


def test_the_split_is_deterministic_and_independent_of_global_randomness():
    labels = _labels([300, 100, 20])
    torch.manual_seed(123)
    first = split_test_set(labels, 0.2, seed=0)
    torch.manual_seed(456)
    torch.rand(1000)
    second = split_test_set(labels, 0.2, seed=0)
    assert torch.equal(first.validation, second.validation) and torch.equal(first.report, second.report)
    other = split_test_set(labels, 0.2, seed=1)
    assert not torch.equal(first.validation, other.validation)


def test_the_split_refuses_a_fraction_outside_the_open_interval():
    with pytest.raises(ValueError, match="fraction"):
        split_test_set(torch.zeros(10, dtype=torch.long), 1.0, seed=0)


def _reference_tau(logits: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> float:
    """A brute-force reference in numpy: best accuracy, then smallest |τ|, then smaller τ."""
    log_prior = np.log(counts / counts.sum())
    scored = []
    for tau in TAU_GRID:
        accuracy = float(np.mean(np.argmax(logits - tau * log_prior, axis=1) == labels))
        scored.append((-accuracy, abs(tau), tau))
    return min(scored)[2]


@pytest.mark.parametrize("seed", range(5))
def test_tau_is_the_best_on_validation_by_an_independent_reference(seed):
    rng = np.random.default_rng(seed)
    counts = np.array([500.0, 120.0, 30.0, 8.0])
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4)) + 2.0 * np.eye(4)[labels] + 0.8 * np.log(counts / counts.sum())
    ours = choose_tau(torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(counts))
    assert ours == pytest.approx(_reference_tau(logits, labels, counts))


def test_tau_corrects_a_known_prior_shift():
    """Logits that carry 1.5·log(prior) on top of a perfect signal are best read at τ ≈ 1.5."""
    counts = torch.tensor([1000.0, 100.0, 10.0])
    labels = torch.arange(3).repeat(200)
    signal = 3.0 * torch.nn.functional.one_hot(labels, 3).double()
    logits = signal + 1.5 * torch.log(counts / counts.sum()) + 0.5 * _noise(600, 3, seed=0)
    assert 1.0 <= choose_tau(logits, labels, counts) <= 2.0


def test_ties_go_to_the_least_adjustment():
    """A perfectly separated set is right at every small τ: the choice is τ = 0."""
    labels = torch.arange(4).repeat(10)
    logits = 50.0 * torch.nn.functional.one_hot(labels, 4).double()
    assert choose_tau(logits, labels, torch.tensor([40.0, 20.0, 10.0, 5.0])) == 0.0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _reference_blend(head, encoder, labels, counts) -> tuple[float, float, float]:
    """(validation accuracy, w, τ) by brute force over the grids, in numpy."""
    scored = []
    for weight in BLEND_GRID:
        mixed = (1 - weight) * _log_softmax(encoder) + weight * _log_softmax(head)
        tau = _reference_tau(mixed, labels, counts)
        accuracy = float(np.mean(np.argmax(mixed - tau * np.log(counts / counts.sum()), axis=1) == labels))
        scored.append((accuracy, weight, tau))
    return max(scored, key=lambda t: (t[0], t[1]))


@pytest.mark.parametrize("seed", range(4))
def test_the_blend_is_the_best_on_validation_by_an_independent_reference(seed):
    """Two heads that each see half of the signal: the blend is chosen as a brute-force numpy
    search over (w, τ) chooses it, and it beats either head alone."""
    rng = np.random.default_rng(seed)
    counts = np.array([400.0, 100.0, 25.0, 6.0])
    labels = rng.integers(0, 4, 600)
    signal = np.eye(4)[labels]
    head = rng.normal(size=(600, 4)) + 1.2 * signal
    encoder = rng.normal(size=(600, 4)) + 1.2 * signal + np.log(counts / counts.sum())
    weight, tau = choose_blend(torch.from_numpy(head), torch.from_numpy(encoder), torch.from_numpy(labels), torch.from_numpy(counts))
    accuracy, ref_weight, ref_tau = _reference_blend(head, encoder, labels, counts)
    assert (weight, tau) == pytest.approx((ref_weight, ref_tau))
    assert 0.0 < weight < 1.0  # independent errors: the mix beats either head
    alone = [float(np.mean(np.argmax(h, axis=1) == labels)) for h in (head, encoder - np.log(counts / counts.sum()))]
    assert accuracy > max(alone) + 0.02


def test_a_head_blended_with_an_uninformative_encoder_head_is_read_alone():
    """Constant encoder logits carry nothing: the blend keeps the head alone (w = 1), with the τ
    the head's own tuned adjustment takes."""
    counts = torch.tensor([300.0, 100.0, 30.0])
    labels = _labels([300, 300, 300])
    head = 2.0 * torch.nn.functional.one_hot(labels, 3).double() + _noise(900, 3, seed=4) + torch.log(counts / counts.sum())
    weight, tau = choose_blend(head, torch.zeros(900, 3).double(), labels, counts)
    assert weight == 1.0
    assert tau == choose_tau(torch.log_softmax(head, dim=1), labels, counts)


def test_the_blend_ignores_the_report_labels():
    counts = torch.tensor([300, 100, 30])
    labels = _labels([400, 400, 400])
    head = 1.5 * torch.nn.functional.one_hot(labels, 3).double() + _noise(1200, 3, seed=5)
    encoder = 1.5 * torch.nn.functional.one_hot(labels, 3).double() + _noise(1200, 3, seed=6)
    true = blended_summaries(head, encoder, labels, split_test_set(labels, 0.2, seed=0), counts, index_groups=False)
    shuffled = blended_summaries(
        head, encoder, labels, split_test_set(labels, 0.2, seed=0, shuffle_report_labels=True), counts, index_groups=False
    )
    assert (shuffled["weight"], shuffled["tau"], shuffled["validation"]) == (true["weight"], true["tau"], true["validation"])
    assert shuffled["report"]["acc"]["overall"] < true["report"]["acc"]["overall"] - 20


def test_shuffled_report_labels_change_the_report_part_only():
    counts = torch.tensor([300, 100, 30])
    labels = _labels([400, 400, 400])
    logits = 2.0 * torch.nn.functional.one_hot(labels, 3).double() + _noise(1200, 3, seed=1)
    true = part_summaries(logits, labels, split_test_set(labels, 0.2, seed=0), counts, prior=None, index_groups=False)
    shuffled_parts = split_test_set(labels, 0.2, seed=0, shuffle_report_labels=True)
    shuffled = part_summaries(logits, labels, shuffled_parts, counts, prior=None, index_groups=False)
    assert shuffled["validation"] == true["validation"]
    assert shuffled["tuned"]["tau"] == true["tuned"]["tau"]
    assert shuffled["tuned"]["validation"] == true["tuned"]["validation"]
    assert shuffled["report"]["acc"]["overall"] < true["report"]["acc"]["overall"] - 20  # ~33 % against ~85 %


def _fast_digits_run(tmp_path, encoder: str, name: str, **evaluation) -> dict:
    config = config_from_dict(
        {
            "name": name,
            "method": "fc_retrain",
            "data": {"dataset": "digits"},
            "encoder": {"checkpoint": encoder},
            "classifier": {"epochs": 50},
            "evaluation": evaluation,
        }
    )
    return execute(Run.create(tmp_path / name, config))


def test_a_run_reports_both_parts_and_ignores_the_report_labels_for_every_choice(tmp_path, digits_encoder):
    plain = _fast_digits_run(tmp_path, digits_encoder, "plain")
    shuffled = _fast_digits_run(tmp_path, digits_encoder, "shuffled", shuffle_report_labels=True)
    parts = plain["test_parts"]
    assert 0.18 < parts["validation"] / (parts["validation"] + parts["report"]) < 0.22
    for ours, check in ((plain, shuffled), (plain["controls"]["ce"], shuffled["controls"]["ce"])):
        assert ours["validation"] == check["validation"]
        assert ours["tuned"]["tau"] == check["tuned"]["tau"]
        assert ours["tuned"]["validation"] == check["tuned"]["validation"]
        assert ours["report"]["acc"]["overall"] > check["report"]["acc"]["overall"] + 30  # ~90 % against ~10 %
        assert ours["acc"] == check["acc"]  # the full test set is scored against the true labels
    assert shuffled["test_parts"]["report_labels_shuffled"] and not parts["report_labels_shuffled"]


def test_a_frozen_encoder_run_reports_the_cheap_heads_beside_its_result(tmp_path, digits_encoder):
    results = _fast_digits_run(tmp_path, digits_encoder, "controls")
    assert set(results["controls"]) == {"ce", "fc_retrain_la", "fc_retrain_normalized"}
    for summary in (results, *results["controls"].values()):
        assert {"acc", "validation", "report", "tuned"} <= set(summary)
    # Every retrained head is also read blended with the shipped head; the shipped head is not.
    assert "blended" not in results["controls"]["ce"]
    for summary in (results, results["controls"]["fc_retrain_la"], results["controls"]["fc_retrain_normalized"]):
        assert summary["blended"]["weight"] in BLEND_GRID
        assert (
            summary["blended"]["validation"]["acc"]["overall"]
            >= max(summary["tuned"]["validation"]["acc"]["overall"], results["controls"]["ce"]["tuned"]["validation"]["acc"]["overall"])
            - 1e-9
        )
    # The logit-adjusted head predicts under a uniform prior: its adjusted scores are its plain ones.
    la_head = results["controls"]["fc_retrain_la"]
    assert la_head["acc_adjusted"] == la_head["acc"]
