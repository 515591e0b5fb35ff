"""The classifier's losses against hand-written references, and what each knob does to a head."""

import math

import numpy as np
import pytest
import torch

from featdiff.config import ClassifierConfig
from featdiff.models.heads import NormalizedLinear
from featdiff.seeding import reset_parameters
from featdiff.training.classifier import ClassifierLoss, WeightedFeatures, classifier_state, train_classifier, trained_prior


def _reference_loss(logits, labels, weights, offsets, margins):
    """−log softmax(z + offsets − margin on the true class)_y, weighted mean, in numpy."""
    total, mass = 0.0, 0.0
    for z, y, w in zip(logits, labels, weights, strict=True):
        z = z + offsets
        z[y] -= margins[y]
        log_softmax = z - (np.max(z) + np.log(np.sum(np.exp(z - np.max(z)))))
        total += -w * log_softmax[y]
        mass += w
    return total / mass


@pytest.mark.parametrize("loss", ["ce", "logit_adjusted", "margin"])
def test_each_loss_matches_its_reference(loss):
    rng = np.random.default_rng(0)
    logits, labels, weights = rng.normal(size=(50, 4)), rng.integers(0, 4, 50), rng.uniform(0.2, 1.0, 50)
    mass = torch.tensor([400.0, 90.0, 20.0, 5.0], dtype=torch.float64)
    config = ClassifierConfig(loss=loss, loss_tau=1.5, margin=0.7)
    prior = mass.numpy() / mass.numpy().sum()
    offsets = 1.5 * np.log(prior) if loss == "logit_adjusted" else np.zeros(4)
    margins = 0.7 * mass.numpy() ** -0.25 / (5.0**-0.25) if loss == "margin" else np.zeros(4)
    ours = ClassifierLoss.of(config, mass)(torch.from_numpy(logits).float(), torch.from_numpy(labels), torch.from_numpy(weights).float())
    assert float(ours) == pytest.approx(_reference_loss(logits, labels, weights, offsets, margins), rel=1e-5)


def test_the_rarest_class_gets_the_full_margin_and_the_head_the_smallest():
    margins = ClassifierLoss.of(ClassifierConfig(loss="margin", margin=0.5), torch.tensor([625.0, 16.0, 1.0], dtype=torch.float64)).margins
    assert margins.tolist() == pytest.approx([0.1, 0.25, 0.5])


def test_the_trained_prior_is_what_the_loss_leaves_in_the_logits():
    mass = torch.tensor([300.0, 100.0, 10.0], dtype=torch.float64)
    assert trained_prior(ClassifierConfig(), mass).tolist() == pytest.approx((mass / mass.sum()).tolist())
    assert trained_prior(ClassifierConfig(loss="logit_adjusted"), mass).tolist() == pytest.approx([1 / 3] * 3)
    half = (mass**0.5) / (mass**0.5).sum()
    assert trained_prior(ClassifierConfig(loss="logit_adjusted", loss_tau=0.5), mass).tolist() == pytest.approx(half.tolist())


def test_a_normalised_head_ignores_the_feature_norm():
    head = NormalizedLinear(torch.nn.Linear(16, 3))
    x = torch.randn(10, 16)
    assert torch.allclose(head(x), head(7.0 * x), atol=1e-5)
    assert torch.allclose(head(x), head.linear(math.sqrt(16) * x / x.norm(dim=1, keepdim=True)), atol=1e-6)


def _imbalanced_blobs(seed=0):
    """Two overlapping Gaussian classes, 20:1: a CE head sides with the head class in the overlap."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(2000, 2, generator=g) + torch.tensor([1.0, 0.0])
    tail = torch.randn(100, 2, generator=g) - torch.tensor([1.0, 0.0])
    features = torch.cat([head, tail])
    labels = torch.cat([torch.zeros(2000, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    return WeightedFeatures(features, labels, torch.ones(2100))


def _trained_head(config: ClassifierConfig) -> torch.nn.Linear:
    data = _imbalanced_blobs()
    head = torch.nn.Linear(2, 2)
    reset_parameters(head, torch.Generator().manual_seed(0))
    train_classifier(classifier_state(head, len(data), config, torch.Generator().manual_seed(1)), data, config)
    return head


BALANCED_TEST = torch.cat([torch.randn(2000, 2, generator=torch.Generator().manual_seed(5)) + torch.tensor([s, 0.0]) for s in (1.0, -1.0)])
RECIPE = {"epochs": 60, "batch_size": 256, "lr": 1e-2}


def _tail_share(head: torch.nn.Linear) -> float:
    with torch.no_grad():
        return float((head(BALANCED_TEST).argmax(dim=1) == 1).double().mean())


def test_the_logit_adjusted_loss_moves_the_boundary_to_the_balanced_one():
    plain = _tail_share(_trained_head(ClassifierConfig(**RECIPE)))
    adjusted = _tail_share(_trained_head(ClassifierConfig(**RECIPE, loss="logit_adjusted")))
    # A balanced classifier of two unit Gaussians 2 apart calls about half the points tail; CE far fewer.
    assert plain < 0.25
    assert 0.4 < adjusted < 0.6


def test_the_margin_loss_moves_the_boundary_towards_the_head():
    """Less than the logit-adjusted loss: on raw features part of the margins goes into a larger
    logit scale (LDAM itself normalises features and weights)."""
    plain = _tail_share(_trained_head(ClassifierConfig(**RECIPE)))
    margin = _tail_share(_trained_head(ClassifierConfig(**RECIPE, loss="margin", margin=2.0)))
    assert plain + 0.005 < margin < 0.4
