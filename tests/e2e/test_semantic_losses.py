"""Each end-to-end loss against a computation by hand (plain Python/NumPy loops) on a tiny batch."""

import math

import numpy as np
import pytest
import scipy.linalg as scipy_linalg
import torch

from featdiff.diffusion.schedules import make_schedule
from featdiff.evaluation.diagnostics import frechet_distance
from featdiff.methods.e2e.losses import covariance_loss, prototype_loss, radius_loss, semantic_timestep_weight, variance_floor_loss

ESTIMATES = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 1, 1])
PROTOTYPES = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
WEIGHTS = torch.tensor([1.0, 0.5, 1.0, 0.25, 0.0], dtype=torch.float64)


def test_prototype_loss_by_hand():
    squared = [(1 - 1) ** 2 + (2 - 1) ** 2, (3 - 1) ** 2 + (0 - 1) ** 2, 0 + 1, 4 + 4, 1 + 0.25]
    expected = sum(w * s for w, s in zip(WEIGHTS.tolist(), squared, strict=True)) / float(WEIGHTS.sum()) / 2
    assert prototype_loss(ESTIMATES, LABELS, PROTOTYPES, WEIGHTS).item() == pytest.approx(expected)


def test_radius_loss_by_hand():
    radii = torch.tensor([2.0, 1.0], dtype=torch.float64)
    distances = [1.0, math.sqrt(5), 1.0, math.sqrt(8), math.sqrt(1.25)]
    residuals = [(d - radii[y].item()) ** 2 for d, y in zip(distances, LABELS.tolist(), strict=True)]
    expected = sum(w * r for w, r in zip(WEIGHTS.tolist(), residuals, strict=True)) / float(WEIGHTS.sum()) / 2
    assert radius_loss(ESTIMATES, LABELS, PROTOTYPES, radii, WEIGHTS).item() == pytest.approx(expected)


def _weighted_population_cov(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    mean = (weights[:, None] * points).sum(0) / weights.sum()
    centred = points - mean
    return sum(w * np.outer(c, c) for w, c in zip(weights, centred, strict=True)) / weights.sum()


def test_covariance_loss_by_hand():
    targets = torch.tensor([[[1.0, 0.2], [0.2, 0.5]], [[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2])  # class 2 has one estimate: no covariance, no term
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    points, w = ESTIMATES.numpy(), weights.numpy()
    expected = 0.0
    for c in (0, 1):
        mask = labels.numpy() == c
        expected += np.linalg.norm(_weighted_population_cov(points[mask], w[mask]) - targets[c].numpy(), "fro") / 2
    got = covariance_loss(ESTIMATES, labels, targets, weights, num_classes=3)
    assert got.item() == pytest.approx(expected)
    assert _weighted_population_cov(points[:2], np.ones(2)) == pytest.approx(np.cov(points[:2].T, bias=True))


def test_variance_floor_loss_by_hand():
    features = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    floor = torch.tensor([1.0, 0.5])
    std = [np.std([0.0, 2.0, 4.0]), 0.0]
    expected = np.mean([max(f - s, 0) ** 2 for f, s in zip(floor.tolist(), std, strict=True)])
    assert variance_floor_loss(features, floor).item() == pytest.approx(expected, rel=1e-5)
    assert variance_floor_loss(features, torch.tensor([0.1, 0.0])).item() == 0.0


def test_timestep_weights():
    schedule = make_schedule("cosine", 1000)
    t = torch.tensor([0, 500, 999])
    alpha_bar = schedule.alphas_cumprod[t]
    assert torch.allclose(semantic_timestep_weight(t, schedule, "alpha_bar").double(), alpha_bar, atol=1e-7)
    expected = torch.minimum(alpha_bar / (1 - alpha_bar), torch.ones(3))
    assert torch.allclose(semantic_timestep_weight(t, schedule, "min_snr").double(), expected, atol=1e-6)
    assert semantic_timestep_weight(t, schedule, "none").tolist() == [1.0, 1.0, 1.0]
    assert semantic_timestep_weight(t, schedule, "none", max_t=500).tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="timestep weighting"):
        semantic_timestep_weight(t, schedule, "bogus")


def test_frechet_distance_matches_scipy_sqrtm():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 5, generator=generator, dtype=torch.float64), torch.randn(5, 5, generator=generator, dtype=torch.float64)
    cov_a, cov_b = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64), b @ b.T
    mean_a, mean_b = torch.randn(5, generator=generator, dtype=torch.float64), torch.randn(5, generator=generator, dtype=torch.float64)
    cross = scipy_linalg.sqrtm(cov_a.numpy() @ cov_b.numpy()).real
    expected = float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a.numpy() + cov_b.numpy() - 2 * cross))
    assert frechet_distance(mean_a, cov_a, mean_b, cov_b).item() == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mean_a, cov_a, mean_a, cov_a).item() == pytest.approx(0.0, abs=1e-6)
    batched = frechet_distance(
        torch.stack([mean_a, mean_b]), torch.stack([cov_a, cov_b]), torch.stack([mean_b, mean_b]), torch.stack([cov_b, cov_b])
    )
    assert batched[0].item() == pytest.approx(expected, rel=1e-6) and batched[1].item() == pytest.approx(0.0, abs=1e-6)
