"""Membership-inference metrics against closed forms, DP ceilings, and the attacks' mechanics."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score

from featdiff.diffusion.objective import DenoisingObjective
from featdiff.diffusion.schedules import make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.privacy.membership import (
    attack_metrics,
    auc_bound,
    clopper_pearson,
    denoiser_loss_scores,
    distance_scores,
    mann_whitney_auc,
    offline_lira_scores,
    tpr_bound,
)


def test_metrics_of_gaussian_scores_match_the_closed_forms():
    rng = np.random.default_rng(0)
    mu = 1.0
    members, non_members = rng.normal(mu, 1, 20_000), rng.normal(0, 1, 20_000)
    metrics = attack_metrics(members, non_members, resamples=200)
    true_auc = norm.cdf(mu / math.sqrt(2))
    low, high = metrics["auc_ci"]
    assert low <= true_auc <= high and high - low < 0.02
    for fpr in (0.01, 0.001):
        truth = norm.cdf(norm.ppf(fpr) + mu)
        entry = metrics[f"tpr_at_{fpr:g}"]
        # The threshold is itself estimated from 20,000 non-members: allow its sampling error too.
        assert entry["ci"][0] - 0.01 <= truth <= entry["ci"][1] + 0.01, (fpr, entry, truth)


def test_batched_auc_is_scikit_learns_roc_auc_with_ties_and_the_bootstrap_reads_it_so():
    rng = np.random.default_rng(1)
    members, non_members = rng.integers(0, 6, (5, 30)).astype(float), rng.integers(0, 5, (5, 17)).astype(float)  # many ties
    labels = np.r_[np.ones(30), np.zeros(17)]
    expected = [roc_auc_score(labels, np.r_[m, n]) for m, n in zip(members, non_members, strict=True)]
    np.testing.assert_allclose(mann_whitney_auc(members, non_members), expected, rtol=0, atol=1e-12)
    # The interval is the quantiles of scikit-learn's AUC over the same resamples (drawn as documented).
    metrics = attack_metrics(members[0], non_members[0], resamples=150, seed=3)
    draws = np.random.default_rng(3)
    boot = [roc_auc_score(labels, np.r_[draws.choice(members[0], 30), draws.choice(non_members[0], 17)]) for _ in range(150)]
    assert metrics["auc"] == pytest.approx(expected[0], abs=1e-12)
    assert metrics["auc_ci"] == pytest.approx([np.quantile(boot, 0.025), np.quantile(boot, 0.975)], abs=1e-12)


def test_clopper_pearson_matches_scipy_exact_interval():
    for successes, trials in ((0, 50), (7, 50), (50, 50), (312, 1000)):
        reference = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(successes, trials) == pytest.approx((reference.low, reference.high), abs=1e-9)


def test_dp_ceilings():
    for epsilon in (0.5, 1.0, 3.0):
        assert auc_bound(epsilon, 0.0) == pytest.approx(math.exp(epsilon) / (1 + math.exp(epsilon)), abs=1e-6)
    assert tpr_bound(1.0, 1e-5, 0.01) == pytest.approx(math.e * 0.01 + 1e-5)
    assert tpr_bound(1.0, 0.0, 0.9) == pytest.approx(1 - math.exp(-1.0) * 0.1)
    assert auc_bound(1.0, 1e-5) > auc_bound(1.0, 0.0) and auc_bound(math.inf, 1e-5) == 1.0


def test_offline_lira_calibrates_record_difficulty():
    """Records differ in how well any model fits them; scores relative to shadow models that
    never saw a record separate members better than raw scores."""
    rng = np.random.default_rng(1)
    records, shadows = 2000, 16
    difficulty = rng.normal(0, 3, records)
    member = rng.random(records) < 0.5
    shadow_mask = rng.random((shadows, records)) < 0.5
    shadow_mask[0] = False  # every record has at least one shadow model that did not train on it
    shadow_scores = difficulty + rng.normal(0, 1, (shadows, records)) + 1.0 * shadow_mask
    target = difficulty + rng.normal(0, 1, records) + 1.0 * member
    raw = attack_metrics(target[member], target[~member], resamples=50)["auc"]
    lira = offline_lira_scores(target, shadow_scores, shadow_mask)
    calibrated = attack_metrics(lira[member], lira[~member], resamples=50)["auc"]
    assert calibrated > raw + 0.1, (raw, calibrated)
    with pytest.raises(ValueError, match="more shadow models"):
        offline_lira_scores(target, shadow_scores, np.ones_like(shadow_mask))


def test_denoiser_loss_scores_share_noise_and_ignore_batching():
    objective = DenoisingObjective(make_schedule("cosine", 100))
    torch.manual_seed(0)
    model = FeatureDenoiser(4, 3, width=16, depth=1, time_dim=8)
    torch.nn.init.normal_(model.output.weight, std=0.3)
    records = torch.randn(10, 4)
    records[3] = records[7]
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    scores = {"objective": objective, "timesteps": [10, 50], "draws": 3}
    whole = denoiser_loss_scores(model, records, labels, **scores, seed=5)
    small = denoiser_loss_scores(model, records, labels, **scores, seed=5, batch_size=3)
    torch.testing.assert_close(whole, small)
    assert whole[3] == whole[7], "the same record must get the same score: members and non-members share the draws"
    assert not torch.equal(whole, denoiser_loss_scores(model, records, labels, **scores, seed=6))
    assert not torch.equal(whole, denoiser_loss_scores(model, records, labels, **scores, seed=5, stream="another stream"))


def test_distance_scores_against_brute_force():
    generator = torch.Generator().manual_seed(2)
    records, released = torch.randn(30, 5, generator=generator), torch.randn(40, 5, generator=generator)
    brute = torch.stack([-(released - r).norm(dim=1).min() for r in records])
    torch.testing.assert_close(distance_scores(records, released, batch_size=7), brute)


def test_experiment_splits_and_canaries():
    from featdiff.privacy.experiments import halves_per_class, make_canaries

    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 2)
    chosen = halves_per_class(labels, torch.Generator().manual_seed(0))
    assert [int(chosen[labels == c].sum()) for c in range(3)] == [5, 3, 1]
    again = halves_per_class(labels, torch.Generator().manual_seed(0))
    assert torch.equal(chosen, again)
    features, classes = make_canaries(200, 16, 5, 8.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(features.norm(dim=1), torch.full((200,), 8.0))
    assert set(classes.tolist()) == set(range(5))
