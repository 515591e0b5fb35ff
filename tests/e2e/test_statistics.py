"""EMA prototypes, covariances and scaling statistics against the update rule written out by hand."""

import numpy as np
import pytest
import torch

from featdiff.statistics import ClassGeometry, ClassStatistics, class_means_and_covariances, trace_radius


def test_class_means_and_covariances_match_numpy():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (40,), generator=generator)
    labels[:2] = 3
    weights = torch.rand(40, generator=generator, dtype=torch.float64)
    means, covariances, mass = class_means_and_covariances(features, labels, weights, 5)
    for c in range(4):
        mask = (labels == c).numpy()
        x, w = features.numpy()[mask], weights.numpy()[mask]
        assert means[c].numpy() == pytest.approx(np.average(x, axis=0, weights=w))
        assert covariances[c].numpy() == pytest.approx(np.cov(x.T, aweights=w, bias=True))
        assert mass[c].item() == pytest.approx(w.sum())
    assert mass[4] == 0 and torch.all(means[4] == 0)


def test_prototype_ema_follows_the_rule_with_pseudo_features_down_weighted():
    stats = ClassStatistics(num_classes=2, feature_dim=2, momentum=0.1)
    first = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    stats.update(first, torch.tensor([0, 0, 1]))
    # First sight of a class sets its statistics outright; class 1 had one sample: no covariance yet.
    assert stats.means.tolist() == [[2.0, 0.0], [0.0, 5.0]]
    assert stats.seen_cov.tolist() == [True, False]
    assert stats.covariances[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]

    real = torch.tensor([[4.0, 0.0]])
    pseudo = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    stats.update(real, torch.tensor([0]), pseudo, torch.tensor([0, 1]), pseudo_weight=0.3)
    batch_mean_0 = (1.0 * torch.tensor([4.0, 0.0]) + 0.3 * torch.tensor([0.0, 0.0])) / 1.3
    expected_0 = 0.9 * torch.tensor([2.0, 0.0]) + 0.1 * batch_mean_0
    expected_1 = 0.9 * torch.tensor([0.0, 5.0]) + 0.1 * torch.tensor([10.0, 10.0])
    assert torch.allclose(stats.means[0], expected_0)
    assert torch.allclose(stats.means[1], expected_1)
    deviations = torch.stack([torch.tensor([4.0, 0.0]) - batch_mean_0, -batch_mean_0])
    batch_cov_0 = (1.0 * torch.outer(deviations[0], deviations[0]) + 0.3 * torch.outer(deviations[1], deviations[1])) / 1.3
    assert torch.allclose(stats.covariances[0], 0.9 * torch.tensor([[1.0, 0.0], [0.0, 0.0]]) + 0.1 * batch_cov_0)
    assert torch.all(stats.covariances[1] == 0)  # still only one sample of class 1 per batch

    stats.update(torch.tensor([[5.0, 5.0]]), torch.tensor([0]))
    assert torch.allclose(stats.means[1], expected_1), "an absent class must keep its prototype"


def test_radii_are_root_trace():
    stats = ClassStatistics(num_classes=1, feature_dim=2)
    stats.fit(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]]), torch.zeros(4, dtype=torch.long))
    assert stats.radii(kappa=2.0).item() == pytest.approx(2.0 * np.sqrt(1.0 + 4.0))


def test_class_geometry_radii_against_a_loop():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(60, 3, generator=generator, dtype=torch.float64)
    labels = torch.arange(60) % 4
    for radius in ("max", "rms"):
        geometry = ClassGeometry.of(features, labels, 4, radius)
        for c in range(4):
            x = features[labels == c]
            distances = (x - x.mean(0)).norm(dim=1)
            assert torch.allclose(geometry.prototypes[c], x.mean(0))
            expected = distances.max() if radius == "max" else distances.square().mean().sqrt()
            assert geometry.radii[c].item() == pytest.approx(expected.item())
    _, covariances, _ = class_means_and_covariances(features, labels, torch.ones(60, dtype=torch.float64), 4)
    assert torch.allclose(trace_radius(covariances), ClassGeometry.of(features, labels, 4, "rms").radii)


def test_default_generation_weight_balances_real_and_pseudo():
    from featdiff.config import EndToEndConfig
    from featdiff.methods.e2e.model import pseudo_label_distribution, resolve_generation_weight, trained_prior

    counts = torch.tensor([500, 120, 30, 5])
    config = resolve_generation_weight(EndToEndConfig(), counts)
    assert config.gamma_ge == pytest.approx((0 + 380 + 470 + 495) / 655)
    prior = trained_prior(config, counts, pseudo_label_distribution(counts, "fill"))
    assert torch.allclose(prior, torch.full((4,), 0.25, dtype=torch.float64))
    assert resolve_generation_weight(EndToEndConfig(gamma_ge=0.5), counts).gamma_ge == 0.5


def test_clip_range_follows_the_features_seen_since_the_last_epoch(new_model):
    from featdiff.config import EndToEndConfig

    config = EndToEndConfig()
    model = new_model(config)
    start = torch.randn(50, 4)
    model.initialise_statistics(start, torch.arange(50) % 3, torch.tensor([17, 17, 16]), config)
    start_low = model.clip_low.clone()
    model.follow_range()  # nothing seen yet: the starting range stays
    assert torch.equal(model.clip_low, start_low)

    first, second = 3 * torch.randn(20, 4) + 1, 3 * torch.randn(20, 4)
    model.observe_range(first)
    model.observe_range(second)
    seen = model.standardizer.encode(torch.cat([first, second]))
    model.follow_range()
    assert torch.equal(model.clip_low, seen.min(0).values)
    assert torch.equal(model.clip_high, seen.max(0).values)
    assert torch.isinf(model.seen_low).all() and torch.isinf(model.seen_high).all()
