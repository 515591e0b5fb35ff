"""The progressive bank's refresh rule and its Fréchet score, against hand-worked cases and closed forms."""

import math

import torch

from featdiff.federated.bank import Bank, class_frechet, refresh


def small_bank() -> Bank:
    labels = torch.tensor([0] * 8 + [1] * 4)
    features = torch.arange(12, dtype=torch.float32)[:, None].repeat(1, 2)
    return Bank.start(features, labels, anchor_share=0.5, generator=torch.Generator().manual_seed(0))


def test_start_marks_the_anchor_share_of_every_class():
    bank = small_bank()
    assert int(bank.anchor[bank.labels == 0].sum()) == 4
    assert int(bank.anchor[bank.labels == 1].sum()) == 2
    assert bool((bank.born == 0).all())


def test_refresh_replaces_at_most_the_share_of_each_class_and_never_an_anchor():
    bank = small_bank()
    candidates = torch.full((10, 2), -1.0)
    candidate_labels = torch.tensor([0] * 6 + [1] * 4)
    refreshed, replaced = refresh(bank, candidates, candidate_labels, share=0.25, current_round=3)
    changed = (refreshed.features != bank.features).any(1)
    assert replaced == 2 + 1  # ⌊0.25·8⌋ of class 0, ⌊0.25·4⌋ of class 1
    assert int(changed.sum()) == replaced
    assert not bool((changed & bank.anchor).any())
    assert bool((refreshed.born[changed] == 3).all()) and bool((refreshed.born[~changed] == 0).all())
    assert torch.equal(refreshed.labels, bank.labels)


def test_refresh_takes_the_oldest_rows_first_and_is_limited_by_the_candidates():
    bank = small_bank()
    first, _ = refresh(bank, torch.full((2, 2), -1.0), torch.tensor([0, 0]), share=0.25, current_round=1)
    second, replaced = refresh(first, torch.full((1, 2), -2.0), torch.tensor([0]), share=0.25, current_round=2)
    assert replaced == 1
    fresh = (second.born == 2).nonzero().flatten()
    assert len(fresh) == 1 and int(first.born[fresh]) == 0  # the round-1 rows are younger, so a warm-up row went


def test_class_frechet_is_zero_for_matching_moments_and_closed_form_for_a_shift():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4000, 3, generator=generator, dtype=torch.float64)
    labels = torch.zeros(4000, dtype=torch.long)
    mean, cov = features.mean(0, keepdim=True), torch.cov(features.T, correction=0)[None]
    present = torch.tensor([True])
    assert float(class_frechet(features, labels, mean, cov, present)[0]) < 1e-9
    shifted = class_frechet(features + 2.0, labels, mean, cov, present)
    assert math.isclose(float(shifted[0]), 3 * 4.0, rel_tol=1e-9)  # ‖Δμ‖² = 3·2², equal covariances


def test_class_frechet_is_nan_for_absent_classes():
    features = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(10, dtype=torch.long)
    distances = class_frechet(features, labels, torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1), torch.tensor([True, True]))
    assert not math.isnan(float(distances[0])) and math.isnan(float(distances[1]))
