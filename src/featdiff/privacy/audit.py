"""The one-run privacy audit (Steinke, Nasr, Jagielski, NeurIPS 2023): an ε lower bound from a
single training run with m canaries, each included independently with probability ½.

An attack scores every canary; the auditor guesses "in" for the k₊ highest scores and "out" for
the k₋ lowest and abstains on the rest. Under (ε, δ)-DP the number v of correct guesses among
the r = k₊ + k₋ made is dominated, up to a δ term, by Binomial(r, e^ε/(1 + e^ε)) (their
Theorem 3.1 and Appendix D), so an ε whose p-value for the observed v is below β is rejected; the
largest rejected ε is the lower bound ε_lo at confidence 1 − β. A lower bound above the claimed
ε means the claim (or the code) is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom


def p_value(epsilon: float, *, delta: float, guesses: int, correct: int, canaries: int) -> float:
    """P[Bin(r, q) ≥ v] + 2·m·δ·max_{i=1..v} P[v − i ≤ Bin(r, q) < v]/i, q = e^ε/(1 + e^ε)
    (Steinke et al., Appendix D): how likely v correct guesses of r are under (ε, δ)-DP."""
    q = 1 / (1 + math.exp(-epsilon))
    tail = float(binom.sf(correct - 1, guesses, q))
    if delta == 0 or correct == 0:
        return min(1.0, tail)
    i = np.arange(1, correct + 1)
    below = binom.cdf(correct - 1, guesses, q) - binom.cdf(correct - 1 - i, guesses, q)
    return min(1.0, tail + 2 * canaries * delta * float(np.max(below / i)))


def epsilon_lower_bound(*, delta: float, guesses: int, correct: int, canaries: int, confidence: float = 0.95) -> float:
    """The largest ε rejected at level β = 1 − confidence (0 when even ε = 0 is not rejected)."""
    beta = 1 - confidence
    counts = {"delta": delta, "guesses": guesses, "correct": correct, "canaries": canaries}
    if guesses == 0 or p_value(0.0, **counts) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(high, **counts) < beta:
        low, high = high, 2 * high
        if high > 100:
            return low
    for _ in range(60):
        middle = (low + high) / 2
        if p_value(middle, **counts) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class AuditResult:
    epsilon_lower_bound: float
    guesses: int
    correct: int
    canaries: int
    k_in: int
    k_out: int


def one_run_audit(
    scores: np.ndarray, included: np.ndarray, *, delta: float, guess_counts: list[int], confidence: float = 0.95
) -> AuditResult:
    """ε_lo from canary `scores` (higher = more likely a member) and their true inclusion, trying
    each k in `guess_counts` (k/2 highest guessed in, k/2 lowest out). Choosing k after seeing the
    result costs a Bonferroni correction: each k is tested at β / len(guess_counts)."""
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    level = 1 - (1 - confidence) / len(guess_counts)
    best = AuditResult(0.0, 0, 0, len(scores), 0, 0)
    for k in guess_counts:
        k_in, k_out = k // 2, k - k // 2
        if k_in + k_out > len(scores):
            raise ValueError(f"{k} guesses for {len(scores)} canaries")
        correct = int(included[order[:k_in]].sum() + (~included[order[len(scores) - k_out :]]).sum())
        bound = epsilon_lower_bound(delta=delta, guesses=k, correct=correct, canaries=len(scores), confidence=level)
        if bound > best.epsilon_lower_bound:
            best = AuditResult(bound, k, correct, len(scores), k_in, k_out)
    return best
