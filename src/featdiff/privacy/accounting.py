"""Privacy accounting for dp-promise-style training: pure functions of the mechanism's parameters.

Both phases are Poisson-subsampled Gaussian mechanisms (`SubsampledGaussian`): Phase II is DP-SGD
with noise multiplier σ (noise std / clipping norm); Phase I releases x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε
for t ≥ S, a Gaussian mechanism whose sensitivity is that of √ᾱ_S·x, so its noise multiplier is
σ_eq = √((1−ᾱ_S)/ᾱ_S) / Δ, with Δ the L2 sensitivity of x under the adjacency (2R for
replace-one of records clipped to norm R, dp-promise's choice; R for add/remove-one).

Which pair of output distributions a mechanism is accounted with (`SubsampledGaussian.relation`):
- `add_remove_one`: a record present or absent, Opacus's pair (1 − q)·N(0, σ²) + q·N(1, σ²)
  against N(0, σ²), in both directions. It also accounts a mechanism whose noise multiplier is
  already relative to the L2 distance between neighbours' outputs under replace-one: a one-shot
  release (q = 1), and Phase I with Δ = 2R.
- `replace_one`: a clipped sum (DP-SGD) one of whose records is replaced by another, so each
  side is a mixture: (1 − q)·N(0, σ²) + q·N(−1, σ²) against (1 − q)·N(0, σ²) + q·N(1, σ²), σ
  relative to the clip norm (dp-accounting's REPLACE_ONE pair). Accounting such a sum with the
  add/remove pair at σ under-reports ε about twofold; with it at σ/2 (sensitivity 2C) it
  over-reports (a test checks both sides).

Two accountants:
- `clt_epsilon`: dp-promise's own, the GDP central-limit approximation (Bu et al. 2020):
  μ_i = q_i·√(n_i·(exp(1/σ_i²) − 1)), composed as μ = √Σμ_i², converted to (ε, δ). It reproduces
  the paper's configs but under-reports ε, most in Phase I where σ_eq is small; it knows only the
  add/remove pair.
- `tight_epsilon`: the ε featdiff claims. With add/remove pairs only, the privacy-loss-random-variable
  (PRV) accountant of Opacus over the heterogeneous composition (Gopi et al. 2021), the upper end
  of its error interval (a test checks it against dp-accounting's PLD); with any replace-one pair,
  dp-accounting's privacy-loss-distribution (PLD) accountant over the same composition, each
  mechanism with its own pair (pessimistic discretisation: an upper bound), since Opacus has no
  replace-one pair.

Both take Phase I as dp-promise does, a subsampled Gaussian. `per_record_epsilon` is the ε without
that argument (each noisy input traced to its record), which every private run reports beside its claim.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

TIGHT_RELATIVE_ERROR = 1e-3
"""Relative ε error of the PRV discretisation; the reported ε is the upper end of its interval."""
PLD_DISCRETISATION = 1e-3
"""dp-accounting's privacy-loss discretisation interval for replace-one compositions. On random
two-phase add/remove settings its (pessimistic) ε agreed with Opacus's PRV within 0.5 % (0.1 %
above ε = 1) at a 15th of the time of its default, 1e-4, which moved ε by under 3e-4."""


Relation = Literal["add_remove_one", "replace_one"]


@dataclass(frozen=True)
class SubsampledGaussian:
    """`steps` Gaussian mechanisms with noise multiplier σ, each on a Poisson sample at rate q,
    accounted with the pair of `relation` (see the module docstring)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    relation: Relation = "add_remove_one"

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.relation not in ("add_remove_one", "replace_one"):
            raise ValueError(f"relation must be 'add_remove_one' or 'replace_one', got {self.relation!r}")


def phase_one_noise_multiplier(alpha_bar: float, sensitivity: float) -> float:
    """σ_eq of releasing √ᾱ·x + √(1−ᾱ)·ε for x of L2 sensitivity Δ: √((1−ᾱ)/ᾱ)/Δ."""
    if not 0 < alpha_bar < 1 or not sensitivity > 0:
        raise ValueError(f"need 0 < alpha_bar < 1 and sensitivity > 0, got {alpha_bar}, {sensitivity}")
    return math.sqrt((1 - alpha_bar) / alpha_bar) / sensitivity


def clt_mu(phase: SubsampledGaussian) -> float:
    """The GDP-CLT μ of one phase: q·√(n·(exp(1/σ²) − 1))."""
    return phase.sample_rate * math.sqrt(phase.steps * math.expm1(phase.noise_multiplier**-2))


def gdp_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of μ-GDP: Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2) (Dong, Roth, Su 2019, Cor. 2.13)."""
    return float(gdp_deltas(np.asarray(mu, dtype=np.float64), epsilon))


def gdp_deltas(mus: np.ndarray, epsilon: float) -> np.ndarray:
    """`gdp_delta` at every μ of an array at once; the second term in log space (e^ε alone
    overflows at the large μ of very little noise)."""
    from scipy.special import log_ndtr, ndtr  # here: only the CLT and per-record bounds need SciPy, slow to import

    return ndtr(-epsilon / mus + mus / 2) - np.exp(epsilon + log_ndtr(-epsilon / mus - mus / 2))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The ε at which μ-GDP gives δ, by Brent's method (0 when δ(0) ≤ δ already)."""
    from scipy.optimize import brentq  # here: only the CLT accountant needs it, and it is slow to import

    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    high = 1.0
    while gdp_delta(mu, high) > delta:
        high *= 2
    return float(brentq(lambda eps: gdp_delta(mu, eps) - delta, 0.0, high, xtol=1e-12))


def clt_epsilon(phases: Sequence[SubsampledGaussian], delta: float) -> float:
    """dp-promise's accountant: GDP-CLT per phase, composed in quadrature, converted at δ."""
    return gdp_epsilon(math.sqrt(sum(clt_mu(phase) ** 2 for phase in phases if phase.steps > 0)), delta)


@functools.cache
def _step_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one subsampled Gaussian step at Opacus's default orders; `steps` of them are `steps`
    times it, as Opacus computes them."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    return compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)


def _rdp_epsilon(mechanisms: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Opacus's RDP accountant's ε for (noise multiplier, sample rate, steps) mechanisms, from the cached step RDPs."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum(_step_rdp(rate, sigma) * steps for sigma, rate, steps in mechanisms)
    return float(get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])


@functools.cache
def _prv_accountant_class() -> type:
    """Opacus's PRV accountant whose discretisation domain is sized from cached RDP curves.

    Opacus sizes the domain (Gopi et al. 2021, remark 5.6) from an RDP bound that it computes
    afresh, over 150 orders, at every ε query; that was two thirds of a calibration's time, which
    asks about the same mechanisms again and again. The domain is the same number
    (`opacus.accountants.analysis.prv.domain.compute_safe_domain_size`, checked by a test)."""
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import Domain

    class CachedDomainPRVAccountant(PRVAccountant):
        def _get_domain(self, prvs, num_self_compositions, eps_error, delta_error):
            total = sum(num_self_compositions)
            mechanisms = [(prv.noise_multiplier, prv.sample_rate, steps) for prv, steps in zip(prvs, num_self_compositions, strict=True)]
            bound = _rdp_epsilon(mechanisms, delta_error / 4)
            for sigma, rate, _ in mechanisms:
                bound = max(bound, _rdp_epsilon([(sigma, rate, 1)], delta_error / (8 * total)))
            half_width = max(bound, eps_error) + 3
            mesh_size = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
            return Domain.create_aligned(-half_width, half_width, mesh_size)

    return CachedDomainPRVAccountant


def tight_epsilon(phases: Sequence[SubsampledGaussian], delta: float, relative_error: float = TIGHT_RELATIVE_ERROR) -> float:
    """ε of the composition of all phases, an upper bound: Opacus's PRV accountant when every pair
    is add/remove, at most `relative_error`·ε above its estimate (a coarse pass sizes the error of
    the fine one, since the cost grows as the absolute error shrinks); dp-accounting's
    pessimistic PLD once a pair is replace-one. Remembered per process: a plan asks for the same
    composition several times (calibration, the claim, the table)."""
    return _tight_epsilon(tuple(p for p in phases if p.steps > 0), delta, relative_error)


@functools.lru_cache(maxsize=1024)
def _tight_epsilon(phases: tuple[SubsampledGaussian, ...], delta: float, relative_error: float) -> float:
    if not phases:
        return 0.0
    if any(p.relation == "replace_one" for p in phases):
        return _pld_epsilon(phases, delta)
    accountant = _prv_accountant_class()()
    accountant.history = [(p.noise_multiplier, p.sample_rate, p.steps) for p in phases]
    with warnings.catch_warnings():
        # Opacus sizes the PRV's domain from an RDP bound and warns when that bound's best order is
        # its largest; the domain only needs to be wide enough, and PRV's error bound covers it.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # A mechanism without subsampling (q = 1: a one-shot Gaussian release) makes the PRV take
        # log(1 − q) = −∞ in a comparison that is then true everywhere, which is the exact case.
        warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning)
        coarse = accountant.get_epsilon(delta, eps_error=0.05)
        return float(accountant.get_epsilon(delta, eps_error=relative_error * max(coarse, 0.5)))


def _pld_epsilon(phases: tuple[SubsampledGaussian, ...], delta: float) -> float:
    """dp-accounting's PLD over the composition, every mechanism with its own pair."""
    return float(_composed_pld(phases).get_epsilon_for_delta(delta))


def _composed_pld(phases: tuple[SubsampledGaussian, ...]):
    """dp-accounting's (pessimistic) PLD of the composition, every mechanism with its own pair."""
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution

    relations = {"add_remove_one": NeighboringRelation.ADD_OR_REMOVE_ONE, "replace_one": NeighboringRelation.REPLACE_ONE}
    composed = None
    for phase in phases:
        pld = privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=phase.noise_multiplier,
            sampling_prob=phase.sample_rate,
            value_discretization_interval=PLD_DISCRETISATION,
            neighboring_relation=relations[phase.relation],
        ).self_compose(phase.steps)
        composed = pld if composed is None else composed.compose(pld)
    return composed


PER_RECORD_TAIL = 1e-4
"""The share of δ given to the visit counts a per-record bound leaves out (their probability is added to δ)."""
PER_RECORD_GRID = 256
"""A visit's μ² is rounded up to a multiple of (largest μ²)/PER_RECORD_GRID: exact when every visit has the same σ."""
PER_RECORD_LEVELS = 64
"""With other phases, at most this many distinct total μ² (rounded up beyond that), each composed
with them once: on the digits example ε rose 0.4 % against 128 levels, at half the time."""


def per_record_epsilon(
    phase_one: SubsampledGaussian, others: Sequence[SubsampledGaussian], delta: float, visit_noise_multipliers: Sequence[float] = ()
) -> float:
    """ε of the composition with Phase I bounded record by record, not by dp-promise's argument.

    Phase I trains without clipping or gradient noise on the noisy inputs of each Poisson batch, so
    in the worst case its model releases the batch's set of noisy inputs. dp-promise accounts that set
    as a subsampled Gaussian *sum*, which mixes the record's noise with everyone's; for a set of
    separate noisy points that is an argument, not a theorem. Without it, assume every noisy input
    can be traced to its record (a set reveals no more than that, so this bounds it from above): a
    replaced record is then visited K ~ Binomial(steps, q) times, and each visit, at a timestep drawn
    uniformly and seen, is a Gaussian mechanism at that timestep's noise multiplier σ_t relative to
    the two records' distance (`visit_noise_multipliers`, one per timestep; empty: every visit at
    `phase_one.noise_multiplier`, the largest signal share). Given the visits, the record's noisy
    inputs are one Gaussian mechanism of μ² = Σ 1/σ_t², so δ(ε) is the mean over the law of μ² of
    that Gaussian composed with `others` (dp-accounting's PLD, each with its own pair; Dong, Roth and
    Su's closed form when there are none). Pessimistic throughout: each visit's μ² rounded up to a
    grid, beyond PER_RECORD_LEVELS totals rounded up again, visit counts beyond a PER_RECORD_TAIL·δ
    tail dropped and their probability added to δ. Only replace-one has this bound: under add/remove
    an added record's noisy input has no counterpart, and without a shuffling argument no finite ε
    holds. Remembered per process, like `tight_epsilon`."""
    sigmas = tuple(visit_noise_multipliers) or (phase_one.noise_multiplier,)
    return _per_record_epsilon(phase_one, tuple(p for p in others if p.steps > 0), delta, sigmas)


def _total_mu_squared_law(
    phase_one: SubsampledGaussian, sigmas: tuple[float, ...], delta: float, max_levels: int | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(levels of Σ μ², their probabilities, the probability left out): the law of a record's total μ²
    over its Binomial visits, each visit's μ² = 1/σ_t² for a uniform t, rounded up; at most
    `max_levels` levels (None: every distinct total)."""
    from scipy.stats import binom

    squared = np.asarray(sigmas, dtype=np.float64) ** -2
    unit = squared.max() / PER_RECORD_GRID
    kernel = np.bincount(np.ceil(squared / unit - 1e-9).astype(np.int64), minlength=PER_RECORD_GRID + 1) / len(squared)
    tail = PER_RECORD_TAIL * delta / 2
    low = int(binom.ppf(tail, phase_one.steps, phase_one.sample_rate))
    high = int(binom.isf(tail, phase_one.steps, phase_one.sample_rate))
    weights = binom.pmf(np.arange(high + 1), phase_one.steps, phase_one.sample_rate)
    law, visits = np.zeros(high * PER_RECORD_GRID + 1), np.ones(1)  # visits: the law of Σ over k visits, in units
    for k in range(high + 1):
        if k:
            visits = np.convolve(visits, kernel)
        if k >= low:
            law[: len(visits)] += weights[k] * visits
    left_out = max(0.0, 1.0 - float(weights[low:].sum()))
    totals = np.flatnonzero(law > 0)
    step = max(1, math.ceil(totals[-1] / max_levels)) if max_levels is not None and len(totals) > max_levels else 1
    levels = np.ceil(totals / step).astype(np.int64) * step
    merged = np.unique(levels)
    probabilities = np.zeros(len(merged))
    np.add.at(probabilities, np.searchsorted(merged, levels), law[totals])
    return merged * unit, probabilities, left_out


@functools.lru_cache(maxsize=256)
def _per_record_epsilon(
    phase_one: SubsampledGaussian, rest: tuple[SubsampledGaussian, ...], delta: float, sigmas: tuple[float, ...]
) -> float:
    from scipy.optimize import brentq

    # Each level costs a PLD composition when there are other phases; the closed form costs nothing.
    mu_squared, probabilities, left_out = _total_mu_squared_law(phase_one, sigmas, delta, PER_RECORD_LEVELS if rest else None)
    if rest:
        base = _composed_pld(rest)
        composed = [base if m == 0 else base.compose(_gaussian_pld(1 / math.sqrt(m))) for m in mu_squared]

        def delta_of(epsilon: float) -> float:
            return float(sum(p * pld.get_delta_for_epsilon(epsilon) for p, pld in zip(probabilities, composed, strict=True))) + left_out
    else:
        visited = mu_squared > 0  # no visit, no loss
        mus, visited_probabilities = np.sqrt(mu_squared[visited]), probabilities[visited]

        def delta_of(epsilon: float) -> float:
            return float(visited_probabilities @ gdp_deltas(mus, epsilon)) + left_out

    if delta_of(0.0) <= delta:
        return 0.0
    high = 1.0
    while delta_of(high) > delta:
        high *= 2
    return float(brentq(lambda epsilon: delta_of(epsilon) - delta, 0.0, high, xtol=1e-6))


def _gaussian_pld(noise_multiplier: float):
    """dp-accounting's PLD of one Gaussian mechanism (sensitivity 1, no sampling)."""
    from dp_accounting.pld import privacy_loss_distribution

    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, value_discretization_interval=PLD_DISCRETISATION
    )


Accountant = Callable[[Sequence[SubsampledGaussian], float], float]
ACCOUNTANTS: dict[str, Accountant] = {"prv": tight_epsilon, "clt": clt_epsilon}


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    fixed: Sequence[SubsampledGaussian] = (),
    relative_tolerance: float = 0.005,
    accountant: Accountant = tight_epsilon,
    relation: Relation = "add_remove_one",
) -> float:
    """A σ for which `steps` subsampled Gaussian steps at rate q (accounted with the pair of
    `relation`), composed with the `fixed` phases, spend ε ∈ [(1 − tolerance)·target, target]
    under `accountant` (the tight one by default): the target is never exceeded and little of it
    is left unspent. ε falls roughly as a power of σ, so the search takes secant steps in log σ
    against log ε, bisecting the bracket instead when a step would leave it and at every fourth
    step (so that it always shrinks): half the accountant calls of a bisection on log σ, and each
    tight call is a large share of a private run's start-up. Where no σ lands in the band (an
    accountant with a jump), it returns the smallest σ found that spends at most the target.

    Raises ValueError when the fixed phases alone spend the target (no σ can help)."""
    spent = accountant(fixed, delta)
    if spent >= target_epsilon:
        raise ValueError(f"the fixed phases alone spend ε = {spent:.3f} ≥ the target {target_epsilon}")

    @functools.cache
    def epsilon(sigma: float) -> float:
        return accountant([*fixed, SubsampledGaussian(sigma, sample_rate, steps, relation)], delta)

    band = ((1 - relative_tolerance) * target_epsilon, target_epsilon)
    aim = math.log((1 - relative_tolerance / 2) * target_epsilon)  # the middle of the band
    low = high = None  # the largest σ known to spend more than the target, the smallest known not to
    seen: list[tuple[float, float]] = []  # (log σ, log ε) of every σ tried with ε > 0
    sigma = 1.0
    for count in range(200):
        spent = epsilon(sigma)
        if band[0] <= spent <= band[1]:
            return sigma
        if spent > target_epsilon:
            low = sigma if low is None else max(low, sigma)
        else:
            high = sigma if high is None else min(high, sigma)
        if spent <= 0:  # far too much noise to resolve: halve
            guess = math.log(sigma / 2)
        else:
            seen.append((math.log(sigma), math.log(spent)))
            # the secant through the two points nearest the aim (ε ∝ 1/σ while there is one point)
            nearest = sorted(seen, key=lambda point: abs(point[1] - aim))[:2]
            (x0, y0), slope = nearest[0], -1.0
            if len(nearest) == 2 and nearest[1][0] != x0:
                measured = (nearest[1][1] - y0) / (nearest[1][0] - x0)
                slope = measured if measured < 0 else slope
            guess = x0 + (aim - y0) / slope
        if low is not None and high is not None:  # inside the bracket, and every 4th step halves it
            left, right = math.log(low), math.log(high)
            margin = 1e-3 * (right - left)
            inside = left < guess < right and count % 4 != 3
            guess = min(max(guess, left + margin), right - margin) if inside else (left + right) / 2
        elif high is None:  # more noise: 1.25x to 8x beyond the largest σ tried, until one spends little enough
            guess = min(max(guess, math.log(low * 1.25)), math.log(low * 8))
        else:  # less noise, likewise
            guess = min(max(guess, math.log(high / 8)), math.log(high / 1.25))
        sigma = math.exp(guess)
    if high is None:
        raise RuntimeError(f"no noise multiplier found that spends at most ε = {target_epsilon}")
    return high


def poisson_phase(noise_multiplier: float, dataset_size: int, expected_batch: int, epochs: float) -> SubsampledGaussian:
    """featdiff's convention: Poisson sampling at q = B/N, ⌈epochs·N/B⌉ steps."""
    return SubsampledGaussian(noise_multiplier, expected_batch / dataset_size, math.ceil(epochs * dataset_size / expected_batch))
