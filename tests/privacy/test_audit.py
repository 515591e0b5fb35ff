"""The one-run audit against published saturation values and its own soundness."""

import math

import numpy as np
import pytest

from featdiff.privacy.audit import epsilon_lower_bound, one_run_audit, p_value


@pytest.mark.parametrize(
    "canaries, guesses, expected",
    # All guesses correct, β = 0.05, δ = 1e-5: the largest ε_lo a one-run audit can give
    # (verified values in shared/reference/dp.md §4, computed with jax_privacy).
    [(100, 100, 3.49), (1000, 100, 3.47), (1000, 500, 5.09), (1000, 1000, 5.78), (10_000, 1000, 5.53)],
)
def test_saturation_matches_published_values(canaries, guesses, expected):
    assert epsilon_lower_bound(delta=1e-5, guesses=guesses, correct=guesses, canaries=canaries) == pytest.approx(expected, abs=0.02)


def test_pure_dp_p_value_is_the_binomial_tail():
    q = math.exp(1.0) / (1 + math.exp(1.0))
    tail = sum(math.comb(20, j) * q**j * (1 - q) ** (20 - j) for j in range(15, 21))
    assert p_value(1.0, delta=0.0, guesses=20, correct=15, canaries=40) == pytest.approx(tail, rel=1e-9)


def test_randomised_response_is_never_over_audited():
    """Guesses that are right with probability e^ε/(1 + e^ε) are exactly what ε-DP allows: the
    95 % lower bound may exceed the true ε in at most about 5 % of runs."""
    rng = np.random.default_rng(0)
    epsilon, guesses = 1.0, 400
    correct = [int(rng.binomial(guesses, 1 / (1 + math.exp(-epsilon)))) for _ in range(300)]
    bounds = [epsilon_lower_bound(delta=0.0, guesses=guesses, correct=v, canaries=1000) for v in correct]
    assert np.mean(np.array(bounds) > epsilon) <= 0.09
    assert np.median(bounds) > 0.5 * epsilon  # and the audit has power


def test_one_run_audit_separates_perfect_scores_from_noise():
    rng = np.random.default_rng(1)
    included = rng.random(1000) < 0.5
    perfect = one_run_audit(included.astype(float) + 0.01 * rng.random(1000), included, delta=1e-5, guess_counts=[100, 500, 1000])
    assert perfect.correct == perfect.guesses and perfect.epsilon_lower_bound > 4.5
    noise = one_run_audit(rng.random(1000), included, delta=1e-5, guess_counts=[100, 500, 1000])
    assert noise.epsilon_lower_bound < 0.5
