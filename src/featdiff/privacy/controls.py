"""The cheap private controls a private release is measured against, at the same (ε, δ) and adjacency.

Every record is a feature vector clipped to L2 norm R (`privacy.norm_bound`, fixed a priori);
nothing about the private features is used to choose a scale. Three Gaussian mechanisms:

- **class counts**: the per-class histogram plus N(0, σ_n²) per class (sensitivity 1 for
  add/remove-one, √2 for replace-one); its noise multiplier is calibrated so that it alone spends
  `privacy.count_share`·ε. The logit adjustment's prior and the class sizes come from it.
- **class moments** (`dp_gaussian`): per-class sums Σx (sensitivity R, or 2R for replace-one) and
  sums of outer products Σxxᵀ (R², or √2·R², Frobenius), each plus Gaussian noise; their GDP
  budget μ² is split `moments_mean_share` : 1 − that. The class Gaussian is built from the noisy
  statistics (post-processing: PSD projection, shrinkage towards the pooled covariance) and sampled.
- **DP-SGD on the linear head** (`dp_linear`): the logit-adjusted cross-entropy's per-example
  gradients, in closed form for a linear head ((p − e_y)·[x; 1]ᵀ), clipped to C, summed, plus
  N(0, σ²C²), divided by the expected Poisson batch. Under replace-one adjacency the clipped sum is
  accounted with the replace-one pair of mixtures (`featdiff.privacy.accounting`), not as the
  add/remove pair at σ/2 (sensitivity 2C), which over-reports ε. Optionally the head also trains on pseudo-features
  of a class-moment release (their gradient is post-processing and needs neither clipping nor noise).

Every mechanism of a control is composed by the tight accountant (Opacus PRV) into the one
(ε, δ) its ledger claims, and each later mechanism's noise is calibrated with the earlier ones
fixed, so the total never exceeds the target. A run of one control is one release: releasing
two controls of the same records composes their budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featdiff.config import PrivacyConfig
from featdiff.errors import UserError
from featdiff.features import EncodedDataset, FeatureSet
from featdiff.generation.gaussian import ClassGaussian
from featdiff.privacy.accounting import SubsampledGaussian, calibrate_noise_multiplier, tight_epsilon
from featdiff.privacy.dp_promise import clip_to_norm
from featdiff.privacy.dp_sgd import apply_private_gradients, noised_mean
from featdiff.privacy.noise import PrivateNoise
from featdiff.statistics import SufficientStatistics
from featdiff.training.classifier import WeightedFeatures
from featdiff.training.loop import run_steps
from featdiff.training.state import PoissonBatches, ShuffledBatches, TrainState

Control = Literal["dp_linear", "dp_gaussian"]


def clipped_to_bound(encoded: EncodedDataset, norm_bound: float) -> EncodedDataset:
    """Every split's features through the same public clip to norm R the private mechanisms see,
    so a head trained on clipped records (or on a release in that ball) is evaluated in its own input space."""

    def clip(split: FeatureSet | None) -> FeatureSet | None:
        return None if split is None else FeatureSet(clip_to_norm(split.features, norm_bound), split.labels)

    return EncodedDataset(train=clip(encoded.train), test=clip(encoded.test), train_holdout=clip(encoded.train_holdout))


def count_sensitivity(adjacency: str) -> float:
    return math.sqrt(2.0) if adjacency == "replace_one" else 1.0


def moment_sensitivities(adjacency: str, norm_bound: float) -> tuple[float, float]:
    """L2 sensitivities of the stacked class sums and (Frobenius) of the stacked outer-product sums."""
    if adjacency == "replace_one":
        return 2.0 * norm_bound, math.sqrt(2.0) * norm_bound**2
    return norm_bound, norm_bound**2


@dataclass(frozen=True)
class GaussianRelease:
    """One Gaussian mechanism: noise std = `noise_multiplier` · `sensitivity`."""

    noise_multiplier: float
    sensitivity: float

    @property
    def std(self) -> float:
        return self.noise_multiplier * self.sensitivity

    @property
    def mechanism(self) -> SubsampledGaussian:
        return SubsampledGaussian(self.noise_multiplier, 1.0, 1)


@dataclass(frozen=True)
class ControlPlan:
    """The mechanisms of one private control (None: that mechanism is absent, or the run is not
    private) and the (ε, δ) they compose to."""

    control: Control
    dataset_size: int
    delta: float
    counts: GaussianRelease | None
    sums: GaussianRelease | None
    moments: GaussianRelease | None
    sgd: SubsampledGaussian | None
    """DP-SGD as the accountant sees it: noise multiplier σ, the adjacency's pair."""
    sgd_noise_multiplier: float | None
    """σ: the DP-SGD noise std in units of C."""
    sgd_steps: int
    sgd_rate: float

    private: bool = True
    """False when ε is null (no mechanism adds noise)."""
    earlier: tuple[SubsampledGaussian, ...] = ()
    """Mechanisms the same records released before (a federated client's private denoiser), part of the total."""

    def releases_moments(self, privacy: PrivacyConfig) -> bool:
        """Whether class sums and outer products are released (the Gaussian, or dp_linear's pseudo-features)."""
        return self.control == "dp_gaussian" or privacy.linear_release == "gaussian"

    @property
    def mechanisms(self) -> dict[str, SubsampledGaussian]:
        named = {"class counts": self.counts, "class sums": self.sums, "class outer products": self.moments}
        found = {f"earlier release {i + 1}": mechanism for i, mechanism in enumerate(self.earlier)}
        found |= {name: release.mechanism for name, release in named.items() if release is not None}
        return found | ({"dp-sgd of the head": self.sgd} if self.sgd is not None else {})

    @property
    def epsilon(self) -> float:
        return tight_epsilon(list(self.mechanisms.values()), self.delta) if self.private else math.inf

    def table(self) -> dict:
        """ε of each mechanism alone and of all composed (tight accountant), with noise multipliers."""
        rows = {
            name: {"noise_multiplier": m.noise_multiplier, "sample_rate": m.sample_rate, "steps": m.steps}
            for name, m in self.mechanisms.items()
        }
        for name, mechanism in self.mechanisms.items():
            rows[name]["epsilon_alone"] = tight_epsilon([mechanism], self.delta)
        return rows


def plan_control(
    control: Control,
    privacy: PrivacyConfig,
    dataset_size: int,
    *,
    release_counts: bool = True,
    steps: int | None = None,
    earlier: tuple[SubsampledGaussian, ...] = (),
) -> ControlPlan:
    """The calibrated mechanisms of `control` on N records; UserError when the budget cannot be met.

    `release_counts: false` leaves the class counts out (a federated client's counts travel in
    clear in the setup, which the federated threat model does not cover): the whole budget goes to
    the other mechanisms. `steps` fixes dp_linear's DP-SGD step count (default ⌈epochs·N/B⌉).
    `earlier`: mechanisms the records already went through, composed into the total (the new
    noise is calibrated for what they leave)."""
    if privacy.delta >= 1 / dataset_size:
        raise UserError(
            f"config key 'privacy.delta' must be below 1/N = {1 / dataset_size:.3g} for N = {dataset_size} records, "
            f"got {privacy.delta:g}: a δ that large allows releasing a record outright"
        )
    batch = min(privacy.linear_batch, dataset_size)
    rate = batch / dataset_size
    if steps is None:
        steps = math.ceil(privacy.linear_epochs * dataset_size / batch)
    steps = steps if control == "dp_linear" else 0
    epsilon, delta, adjacency = privacy.epsilon, privacy.delta, privacy.adjacency
    if epsilon is None:
        return ControlPlan(control, dataset_size, delta, None, None, None, None, None, steps, rate, private=False)
    counts = None
    fixed: list[SubsampledGaussian] = list(earlier)
    if release_counts:
        counts = GaussianRelease(calibrate_noise_multiplier(epsilon * privacy.count_share, delta, 1.0, 1), count_sensitivity(adjacency))
        fixed = [counts.mechanism]
    sums = moments = None
    if control == "dp_gaussian" or privacy.linear_release == "gaussian":
        target = epsilon if control == "dp_gaussian" else epsilon * privacy.release_share
        combined = calibrate_noise_multiplier(target, delta, 1.0, 1, fixed)  # one Gaussian with μ² = μ_sums² + μ_outer²
        share = privacy.moments_mean_share
        sum_sensitivity, outer_sensitivity = moment_sensitivities(adjacency, privacy.norm_bound)
        sums = GaussianRelease(combined / math.sqrt(share), sum_sensitivity)
        moments = GaussianRelease(combined / math.sqrt(1 - share), outer_sensitivity)
        fixed += [sums.mechanism, moments.mechanism]
    sgd = sigma = None
    if control == "dp_linear":
        try:
            sigma = calibrate_noise_multiplier(epsilon, delta, rate, steps, fixed, relation=adjacency)
        except ValueError as error:
            raise UserError(f"config key 'privacy.epsilon' {epsilon:g} leaves nothing for the head's DP-SGD: {error}") from None
        sgd = SubsampledGaussian(sigma, rate, steps, adjacency)
    return ControlPlan(control, dataset_size, delta, counts, sums, moments, sgd, sigma, steps, rate, earlier=tuple(earlier))


def release_counts(labels: Tensor, num_classes: int, plan: ControlPlan, generator: torch.Generator) -> Tensor:
    """The class counts (float64), plus the count mechanism's noise when the plan is private."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    if plan.counts is None:
        return counts
    return counts + plan.counts.std * torch.randn(num_classes, generator=generator, dtype=torch.float64)


def release_moments(records: Tensor, labels: Tensor, counts: Tensor, plan: ControlPlan, generator: torch.Generator) -> SufficientStatistics:
    """Per-class (released counts, sums, sums of outer products) of the clipped records, the sums
    and outer products noised by their mechanisms when the plan is private."""
    exact = SufficientStatistics.of(records, labels, len(counts))
    if plan.sums is None or plan.moments is None:
        return SufficientStatistics(counts, exact.sums, exact.outer)
    sums = exact.sums + plan.sums.std * torch.randn(exact.sums.shape, generator=generator, dtype=torch.float64)
    outer = exact.outer + plan.moments.std * torch.randn(exact.outer.shape, generator=generator, dtype=torch.float64)
    return SufficientStatistics(counts, sums, (outer + outer.transpose(-1, -2)) / 2)


def released_gaussian(statistics: SufficientStatistics, shrinkage: float) -> ClassGaussian:
    """The class Gaussian of released statistics (post-processing): sizes at least 1, every
    covariance made positive semi-definite after shrinking towards the pooled one."""
    sizes = statistics.counts.clamp_min(1.0)
    return ClassGaussian.fitted(SufficientStatistics(sizes, statistics.sums, statistics.outer), shrinkage, project=True)


def head_gradient(head: nn.Linear, x: Tensor, y: Tensor, offsets: Tensor, clip: float | None) -> tuple[dict[str, Tensor], Tensor]:
    """Σ_i of the per-example gradients of CE(W x_i + b + offsets, y_i), each clipped to norm
    `clip` (None: unclipped), in closed form: ∂/∂W = (p − e_y) xᵀ, ∂/∂b = p − e_y. Also the
    per-example norms before clipping."""
    with torch.no_grad():
        residual = torch.softmax(head(x) + offsets, dim=1) - F.one_hot(y, head.out_features).to(x.dtype)
        norms = residual.norm(dim=1) * (x.square().sum(1) + 1).sqrt()
        if clip is not None:
            residual = residual * (clip / norms.clamp_min(1e-12)).clamp(max=1.0)[:, None]
        return {"weight": residual.T @ x, "bias": residual.sum(0)}, norms


def train_private_head(
    head: nn.Linear,
    records: Tensor,
    labels: Tensor,
    *,
    offsets: Tensor,
    plan: ControlPlan,
    privacy: PrivacyConfig,
    noise: PrivateNoise,
    pseudo: WeightedFeatures | None = None,
    pseudo_generator: torch.Generator | None = None,
) -> TrainState:
    """DP-SGD of `head` on the clipped records with the logit-adjusted loss (`offsets` = τ·log of
    the released prior), Poisson batches from `noise.masks`, σ·C noise from `noise.gaussian`; with
    `pseudo`, each step's gradient is (1 − w)·private + w·(the mean gradient of a batch of
    pseudo-features, drawn from `pseudo_generator`). Not private: the same steps unclipped, unnoised.
    A few hundred steps of a linear head: short enough that a killed run trains it again
    instead of checkpointing it."""
    device = head.weight.device
    records, labels, offsets = records.to(device), labels.to(device), offsets.to(device)
    expected = plan.sgd_rate * len(labels)
    optimizer = torch.optim.Adam(head.parameters(), lr=privacy.linear_lr, fused=True)
    generators = noise.checkpointed() | ({"pseudo batches": pseudo_generator} if pseudo_generator is not None else {})
    state = TrainState(
        model=head, optimizers={"head": optimizer}, generators=generators, batches=PoissonBatches(len(labels), plan.sgd_rate, noise.masks)
    )
    pseudo_batches = None if pseudo is None else ShuffledBatches(len(pseudo), privacy.linear_batch, pseudo_generator, drop_last=True)
    weight = privacy.linear_pseudo_weight if pseudo is not None else 0.0
    zero = torch.zeros_like(offsets)

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        index = index.to(device)
        summed, norms = head_gradient(head, records[index], labels[index], offsets, privacy.linear_clip if plan.private else None)
        if plan.private:
            gradient = noised_mean(
                summed,
                clip_norm=privacy.linear_clip,
                noise_multiplier=plan.sgd_noise_multiplier,
                expected_batch=expected,
                generator=noise.gaussian,
            )
        else:
            gradient = {name: g / expected for name, g in summed.items()}
        if pseudo_batches is not None and pseudo is not None:
            rows = pseudo_batches.next().to(device)
            pseudo_sum, _ = head_gradient(head, pseudo.features[rows].to(device), pseudo.labels[rows].to(device), zero, None)
            gradient = {name: (1 - weight) * g + weight * pseudo_sum[name] / len(rows) for name, g in gradient.items()}
        apply_private_gradients(head, gradient, optimizer)
        return {"clipped_share": (norms > privacy.linear_clip).float().mean()} if len(norms) else {}

    run_steps(state, plan.sgd_steps, step, desc="dp-sgd head")
    return state


def control_ledger(
    plan: ControlPlan, privacy: PrivacyConfig, *, seed: int, covered_files: list[str], covered_row: str, released: str
) -> dict:
    """What a private control's guarantee is and covers, as `ldmlr_dp`'s ledger says it."""
    from featdiff.privacy.noise import noise_source

    return {
        "mechanism": f"{plan.control}: {released}; every record clipped to L2 norm R = {privacy.norm_bound:g}",
        "private": plan.private,
        "epsilon": plan.epsilon if plan.private else None,
        "delta": plan.delta,
        "accountant": "prv",
        "adjacency": privacy.adjacency,
        "records": plan.dataset_size,
        "norm_bound_R": privacy.norm_bound,
        "mechanisms": plan.table() if plan.private else {},
        "dp_sgd_noise_multiplier": plan.sgd_noise_multiplier,
        "count_share": privacy.count_share,
        "reproducible_noise": privacy.reproducible_noise,
        "noise_source": noise_source(privacy, seed),
        "covered_files": covered_files,
        "covered_rows": [covered_row],
        "covers": (
            f"the files {', '.join(covered_files)} and the row {covered_row}, with respect to the training feature records given the "
            "encoder; the tuned logit adjustment of that row divides by the released counts and chooses τ on the public test set"
            + (
                "; it does not hold against anyone who knows the seed (privacy.reproducible_noise is true)"
                if privacy.reproducible_noise
                else ""
            )
        ),
        "does_not_cover": (
            "every other file and row of the run folder (the encoder, trained without privacy on the same images unless "
            "encoder.public; the non-private heads fc_retrain*); the many/medium/few grouping of the reported accuracies, "
            "which uses the true counts (reporting only); releasing this control beside another release of the same records "
            "composes both budgets"
        ),
    }
