"""What a private run will spend, before it trains: the two phases as mechanisms, the noise
multiplier that meets the target ε, and ε per phase under both accountants.

Everything here is a function of the config and of N and D (public: the size of the dataset and
the feature dimension), so `featdiff privacy CONFIG` prints it without touching a record, and a
run refuses a config whose budget cannot be met before it writes anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from featdiff.config import DiffusionConfig, PrivacyConfig
from featdiff.errors import UserError
from featdiff.privacy.accounting import (
    ACCOUNTANTS,
    Accountant,
    SubsampledGaussian,
    calibrate_noise_multiplier,
    clt_epsilon,
    per_record_epsilon,
    phase_one_noise_multiplier,
    poisson_phase,
    tight_epsilon,
)


@dataclass(frozen=True)
class PrivacyPlan:
    dataset_size: int
    feature_scale: float
    """√D/R: a record clipped to norm R is multiplied by this before the denoiser sees it."""
    sensitivity: float
    """Δ of a scaled record under the adjacency: 2√D (replace one) or √D (add/remove one)."""
    alpha_bar: float
    """ᾱ_S, the largest signal share Phase I releases (t ≥ S)."""
    phase_one: SubsampledGaussian | None
    phase_two: SubsampledGaussian | None
    """None when the run is not private (ε = ∞, no noise multiplier given)."""
    delta: float
    accountant: str
    adjacency: str
    phase_one_accounting: str = "dp_promise"
    """dp_promise: Phase I as a subsampled Gaussian sum; per_record: bounded record by record (the claim then needs no argument)."""
    phase_one_visit_noise: tuple[float, ...] = ()
    """σ_t of a Phase I visit at each timestep t ∈ [S, T), drawn uniformly (the per-record bound's visits)."""

    @property
    def phases(self) -> list[SubsampledGaussian]:
        return [p for p in (self.phase_one, self.phase_two) if p is not None]

    @property
    def private(self) -> bool:
        return self.phase_two is not None

    @property
    def epsilon(self) -> float:
        """The ε this run claims (the configured accountant; ∞ when not private)."""
        if not self.private:
            return math.inf
        accountant = _accountant(self.accountant, self.phase_one_accounting, self.phase_one, self.phase_one_visit_noise)
        return accountant(self.phases, self.delta)

    def epsilon_with_phase_one_per_record(self) -> float | None:
        """The total ε with Phase I bounded record by record instead of by dp-promise's subsampled-sum
        argument (`accounting.per_record_epsilon`): what the run can claim without that argument.
        None when there is no Phase I or no noise; ∞ under add/remove (no finite bound without a
        shuffling argument)."""
        if self.phase_one is None or self.phase_one.steps == 0 or not self.private:
            return None
        if self.adjacency != "replace_one":
            return math.inf
        return per_record_epsilon(self.phase_one, [self.phase_two], self.delta, self.phase_one_visit_noise)

    def table(self) -> dict[str, dict[str, float | None]]:
        """ε per phase and in total under both accountants (None where a phase is absent)."""
        rows: dict[str, dict[str, float | None]] = {}
        for name, phases in (("phase_one", [self.phase_one]), ("phase_two", [self.phase_two]), ("total", self.phases)):
            present = [p for p in phases if p is not None]
            if not present or not self.private:
                rows[name] = {"clt": None, "prv": None}
            else:
                rows[name] = {"clt": clt_epsilon(present, self.delta), "prv": tight_epsilon(present, self.delta)}
        return rows


def record_sensitivity(adjacency: str, feature_dim: int) -> float:
    """Δ of a record scaled to norm √D: 2√D when one is replaced, √D when one is added or removed."""
    return (2.0 if adjacency == "replace_one" else 1.0) * math.sqrt(feature_dim)


def phase_one_visit_noise(alphas_cumprod: Sequence[float], split_timestep: int, sensitivity: float) -> tuple[float, ...]:
    """σ_t of a Phase I visit at each t ∈ [S, T): Phase I draws t uniformly there."""
    return tuple(phase_one_noise_multiplier(float(a), sensitivity) for a in alphas_cumprod[split_timestep:])


def _accountant(name: str, phase_one_accounting: str, phase_one: SubsampledGaussian | None, visit_noise: tuple[float, ...]) -> Accountant:
    """The configured accountant; with per_record Phase I accounting, one that bounds `phase_one`
    record by record (its visits at `visit_noise`) and composes the other phases with it."""
    if phase_one_accounting != "per_record" or phase_one is None:
        return ACCOUNTANTS[name]

    def per_record(phases: Sequence[SubsampledGaussian], delta: float) -> float:
        return per_record_epsilon(phase_one, [p for p in phases if p is not phase_one], delta, visit_noise)

    return per_record


def plan_privacy(privacy: PrivacyConfig, diffusion: DiffusionConfig, dataset_size: int, feature_dim: int) -> PrivacyPlan:
    """The mechanisms of a run on N records of dimension D; raises UserError for a budget the
    config cannot meet (the message names the key and the fix)."""
    from featdiff.generation.pseudo import schedule_for

    if privacy.delta >= 1 / dataset_size:
        raise UserError(
            f"config key 'privacy.delta' must be below 1/N = {1 / dataset_size:.3g} for N = {dataset_size} records, "
            f"got {privacy.delta:g}: a δ that large allows releasing a record outright"
        )
    scale = math.sqrt(feature_dim) / privacy.norm_bound
    sensitivity = record_sensitivity(privacy.adjacency, feature_dim)
    alphas = schedule_for(diffusion).alphas_cumprod
    alpha_bar = float(alphas[privacy.split_timestep])
    phase_one, visit_noise = None, ()
    if privacy.phase_one_epochs > 0:
        sigma_one = phase_one_noise_multiplier(alpha_bar, sensitivity)
        phase_one = poisson_phase(sigma_one, dataset_size, privacy.phase_one_batch, privacy.phase_one_epochs)
        visit_noise = phase_one_visit_noise(alphas, privacy.split_timestep, sensitivity)
    accountant = _accountant(privacy.accountant, privacy.phase_one_accounting, phase_one, visit_noise)
    rate = min(1.0, privacy.phase_two_batch / dataset_size)
    steps = math.ceil(privacy.phase_two_epochs * dataset_size / privacy.phase_two_batch)
    sigma = privacy.noise_multiplier
    if privacy.epsilon is not None:
        spent = accountant([phase_one] if phase_one else [], privacy.delta)
        if spent >= privacy.epsilon:
            raise UserError(
                f"config key 'privacy.epsilon' is {privacy.epsilon:g}, but Phase I alone spends ε = {spent:.3g} "
                f"({privacy.accountant} accountant, Phase I {privacy.phase_one_accounting.replace('_', ' ')}): "
                "raise privacy.split_timestep or lower privacy.norm_bound "
                "(or train Phase I for fewer privacy.phase_one_epochs)"
            )
        if sigma is None:
            fixed = [phase_one] if phase_one else []
            sigma = calibrate_noise_multiplier(
                privacy.epsilon, privacy.delta, rate, steps, fixed, accountant=accountant, relation=privacy.adjacency
            )
    # Phase II's clipped sum: under replace-one each side of the pair is a mixture (one record swapped).
    phase_two = SubsampledGaussian(sigma, rate, steps, privacy.adjacency) if sigma is not None else None
    plan = PrivacyPlan(
        dataset_size,
        scale,
        sensitivity,
        alpha_bar,
        phase_one,
        phase_two,
        privacy.delta,
        privacy.accountant,
        privacy.adjacency,
        privacy.phase_one_accounting,
        visit_noise,
    )
    if privacy.epsilon is not None and plan.epsilon > privacy.epsilon * (1 + 1e-9):
        raise UserError(
            f"config key 'privacy.noise_multiplier' {sigma:g} spends ε = {plan.epsilon:.3g} > privacy.epsilon "
            f"{privacy.epsilon:g}: raise it, or leave it null to calibrate it"
        )
    return plan
