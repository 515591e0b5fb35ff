"""Privacy experiments on a denoiser trained as `ldmlr_dp` trains it: membership inference and
the one-run audit. Each function trains its own models in memory from feature records.

Membership (`membership_attacks`): the records of every class are split at random in halves;
the target denoiser trains on the members only. A fifth of each half is set aside to choose the
loss attack's timesteps (never chosen on the evaluated records); the rest is attacked with the
denoiser loss, offline LiRA (shadow denoisers on complementary pairs of random halves), the
distance to the release, and the loss of a classifier trained on the release. Every result
carries the ceiling the claimed (ε, δ) puts on AUC and TPR.

Audit (`canary_audit`): m canaries — feature vectors in random directions at norm R with random
labels, far from the data — each included with probability ½; one training run, of Phase I or
Phase II alone or of both; canaries scored by how much lower their denoising loss is (shared
draws) than under a reference run without canaries; ε_lo by Steinke et al.'s one-run bound. The
negative control trains with the noise off while claiming the same ε. An audit may run the
config's mechanism on a small subset of the records (`scaled_to`), where a canary weighs more.
Measured: `benchmarks/privacy_audit.py` (digits) and `benchmarks/privacy.py` (CIFAR-LT).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from featdiff.config import ClassifierConfig, PrivacyConfig, RunConfig
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings
from featdiff.privacy.audit import one_run_audit
from featdiff.privacy.dp_promise import fit_private_generator, private_records
from featdiff.privacy.membership import (
    attack_metrics,
    auc_bound,
    best_timesteps,
    classifier_loss_scores,
    denoiser_loss_scores,
    distance_scores,
    offline_lira_scores,
    tpr_bound,
)
from featdiff.privacy.plan import PrivacyPlan, plan_privacy
from featdiff.seeding import named_generator, reset_parameters
from featdiff.training.classifier import WeightedFeatures, classifier_state, train_classifier

CANDIDATE_TIMESTEPS = (10, 25, 50, 100, 200, 300, 500)
LOSS_DRAWS = 8
# Where an audit scores its canaries. Phase I: its least noisy timesteps. Phase II: a spread
# over [0, S), chosen on a noise-off CIFAR-10 probe run (seed 0, not a seed the benchmark audits),
# where memorisation after a few hundred steps showed most at t = 100–700, not at t < 50.
PHASE_ONE_OFFSETS = (1, 5, 10, 25, 50)
PHASE_TWO_TIMESTEPS = (100, 200, 300, 500, 700)


def halves_per_class(labels: Tensor, generator: torch.Generator) -> Tensor:
    """A boolean mask choosing a random half of every class's records."""
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        index = torch.nonzero(labels == label).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        chosen[index[: len(index) // 2]] = True
    return chosen


def _plan(config: RunConfig, size: int, feature_dim: int) -> PrivacyPlan:
    return plan_privacy(config.privacy, config.diffusion, size, feature_dim)


def _ceilings(plan: PrivacyPlan) -> dict:
    epsilon = plan.epsilon
    return {"auc": auc_bound(epsilon, plan.delta), **{f"tpr_at_{fpr:g}": tpr_bound(epsilon, plan.delta, fpr) for fpr in (0.01, 0.001)}}


def membership_attacks(
    config: RunConfig, features: Tensor, labels: Tensor, *, num_classes: int, device: torch.device, shadows: int = 4, seed: int = 0
) -> dict:
    """Every attack's metrics against a target trained on half the records (see module docstring).
    `shadows` must be even (complementary pairs of halves) or 0 (no LiRA). Each random choice has
    its own named stream of `seed` ("membership …")."""
    if shadows % 2:
        raise ValueError(f"shadows must be even (complementary pairs of halves), got {shadows}")
    members = halves_per_class(labels, named_generator(seed, "membership target halves"))
    calibration = torch.rand(len(labels), generator=named_generator(seed, "membership calibration split")) < 0.2
    plan = _plan(config, int(members.sum()), features.shape[1])
    diffusion, privacy = config.diffusion, config.privacy
    objective = DenoisingObjective.of(diffusion)

    def fit(chosen: Tensor, chosen_plan: PrivacyPlan, stream: str) -> FeatureGenerator:
        return fit_private_generator(
            features[chosen],
            labels[chosen],
            num_classes=num_classes,
            privacy=privacy,
            diffusion=diffusion,
            plan=chosen_plan,
            seed=seed,
            device=device,
            stream=stream,
        )

    target = fit(members, plan, "membership target")
    records = private_records(features, privacy.norm_bound)

    def loss_scores(model, timesteps) -> np.ndarray:
        scores = denoiser_loss_scores(
            model, records, labels, objective=objective, timesteps=timesteps, draws=LOSS_DRAWS, seed=seed, stream="membership loss draws"
        )
        return scores.numpy()

    by_timestep = {}
    for t in CANDIDATE_TIMESTEPS:
        scores = loss_scores(target.denoiser, [t])
        by_timestep[t] = (scores[(members & calibration).numpy()], scores[(~members & calibration).numpy()])
    chosen = best_timesteps(by_timestep, count=2)
    evaluated = ~calibration
    inside, outside = (members & evaluated).numpy(), (~members & evaluated).numpy()
    results = {"chosen_timesteps": chosen, "members": int(inside.sum()), "non_members": int(outside.sum())}
    target_scores = loss_scores(target.denoiser, chosen)
    results["denoiser_loss"] = attack_metrics(target_scores[inside], target_scores[outside])

    shadow_scores, shadow_mask = [], []
    for index in range(shadows):
        # Shadows come in complementary pairs, so every record is out of half of them.
        if index % 2 == 0:
            half = halves_per_class(labels, named_generator(seed, f"membership shadow halves {index // 2}"))
        else:
            half = ~half
        shadow = fit(half, _plan(config, int(half.sum()), features.shape[1]), f"membership shadow {index}")
        shadow_scores.append(loss_scores(shadow.denoiser, chosen))
        shadow_mask.append(half.numpy())
    if shadows:
        lira = offline_lira_scores(target_scores, np.stack(shadow_scores), np.stack(shadow_mask))
        results["lira_offline"] = attack_metrics(lira[inside], lira[outside]) | {"shadows": shadows}

    counts = torch.full((num_classes,), privacy.release_per_class)
    released, released_labels = target.generate(
        counts, SamplerSettings.of(diffusion), named_generator(seed, "membership release sampling", device)
    )
    clipped = records / plan.feature_scale
    distance = distance_scores(clipped, released).numpy()
    results["distance_to_release"] = attack_metrics(distance[inside], distance[outside])

    classifier = torch.nn.Linear(features.shape[1], num_classes)
    reset_parameters(classifier, named_generator(seed, "membership release classifier initialisation"))
    recipe = ClassifierConfig(epochs=100, batch_size=256)
    data = WeightedFeatures(released, released_labels, torch.ones(len(released_labels)))
    order = named_generator(seed, "membership release classifier data order")
    train_classifier(classifier_state(classifier, len(data), recipe, order), data, recipe)
    ce = classifier_loss_scores(classifier, clipped, labels).numpy()
    results["classifier_on_release_loss"] = attack_metrics(ce[inside], ce[outside])
    results["ceiling"] = _ceilings(plan)
    results["epsilon"] = plan.epsilon if plan.private else None
    return results


def make_canaries(count: int, feature_dim: int, num_classes: int, norm_bound: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Feature vectors of norm R in uniformly random directions, with uniformly random labels."""
    directions = torch.randn(count, feature_dim, generator=generator)
    return norm_bound * directions / directions.norm(dim=1, keepdim=True), torch.randint(0, num_classes, (count,), generator=generator)


def scaled_to(privacy: PrivacyConfig, full_size: int, size: int) -> PrivacyConfig:
    """The same mechanism on `size` records instead of `full_size`: each phase's expected batch
    scaled by size/full_size, so sampling rates and step counts (hence σ and ε) stay the same."""

    def batch(full: int) -> int:
        return max(1, round(full * size / full_size))

    return privacy.model_copy(update={"phase_one_batch": batch(privacy.phase_one_batch), "phase_two_batch": batch(privacy.phase_two_batch)})


Phase = Literal["one", "two", "both"]


@dataclasses.dataclass(frozen=True)
class AuditSpec:
    """What one canary audit runs: which `phase` ("one" or "two" alone, or "both"), `canaries`
    (m), the `seed` of its streams, `records` (audit the config's mechanism on a random subset of
    that many records, batches scaled by `scaled_to`; None: all of them) and `noise_off` (the
    negative control: clipping kept, no noise, the same ε claimed)."""

    phase: Phase
    canaries: int = 500
    seed: int = 0
    records: int | None = None
    noise_off: bool = False

    def __post_init__(self) -> None:
        if self.phase not in ("one", "two", "both"):
            raise ValueError(f"phase must be 'one', 'two' or 'both', got {self.phase!r}")


@dataclasses.dataclass(frozen=True)
class AuditSetup:
    """What one audit trains on: the canaries and which are in, the records, the mechanism and its claim."""

    canary_x: Tensor
    canary_y: Tensor
    included: Tensor
    features: Tensor
    labels: Tensor
    privacy: PrivacyConfig
    plan: PrivacyPlan
    claimed: float
    full_noise_multiplier: float | None


def audit_setup(config: RunConfig, features: Tensor, labels: Tensor, *, num_classes: int, spec: AuditSpec) -> AuditSetup:
    """The canaries, their inclusion bits and the record subset, each from its own named stream
    of the spec's seed: audits with the same seed, canary count and subset size share canaries and
    records (and so a reference)."""
    seed, canaries = spec.seed, spec.canaries
    canary_x, canary_y = make_canaries(
        canaries, features.shape[1], num_classes, config.privacy.norm_bound, named_generator(seed, "audit canaries")
    )
    included = torch.rand(canaries, generator=named_generator(seed, "audit canary inclusion")) < 0.5
    privacy = config.privacy
    if spec.phase == "two":
        privacy = privacy.model_copy(update={"phase_one_epochs": 0.0})
    full_plan = plan_privacy(privacy, config.diffusion, len(features), features.shape[1])
    if spec.records is not None and spec.records < len(features):
        subset = torch.randperm(len(features), generator=named_generator(seed, "audit record subset"))[: spec.records]
        privacy = scaled_to(privacy, len(features), spec.records + canaries // 2)
        features, labels = features[subset], labels[subset]
    plan = plan_privacy(privacy, config.diffusion, len(features) + canaries // 2, features.shape[1])
    claimed = plan.epsilon
    if spec.phase == "one":
        # Phase I alone: no Phase II step runs, and only Phase I's ε is claimed.
        claimed = plan.table()["phase_one"][plan.accountant]
        plan = dataclasses.replace(plan, phase_two=dataclasses.replace(plan.phase_two, steps=0))
    full_sigma = None if full_plan.phase_two is None else full_plan.phase_two.noise_multiplier
    return AuditSetup(canary_x, canary_y, included, features, labels, privacy, plan, claimed, full_sigma)


def _fit_audited(
    config: RunConfig, setup: AuditSetup, x: Tensor, y: Tensor, *, num_classes: int, device: torch.device, spec: AuditSpec, noise_off: bool
) -> FeatureGenerator:
    """One training run of the audit's mechanism. The audited run and its reference share every
    seeded stream ("canary audit/…"), so they differ only in the canaries and the private noise."""
    return fit_private_generator(
        x,
        y,
        num_classes=num_classes,
        privacy=setup.privacy,
        diffusion=config.diffusion,
        plan=setup.plan,
        seed=spec.seed,
        device=device,
        stream="canary audit",
        noise_off=noise_off,
    )


def audit_reference(
    config: RunConfig, features: Tensor, labels: Tensor, *, num_classes: int, device: torch.device, spec: AuditSpec
) -> FeatureGenerator:
    """A canary-free run on the audit's records with the noise off: a reference that several audits
    of the same records can share. Any canary-free model keeps the audit valid (it is independent
    of the inclusion bits); one close to the audited runs gives the scores their power."""
    setup = audit_setup(config, features, labels, num_classes=num_classes, spec=spec)
    return _fit_audited(config, setup, setup.features, setup.labels, num_classes=num_classes, device=device, spec=spec, noise_off=True)


def canary_audit(
    config: RunConfig,
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    device: torch.device,
    spec: AuditSpec,
    reference: FeatureGenerator | None = None,
) -> dict:
    """ε_lo of one training run of `spec.phase` with its claimed ε.

    With `spec.records` the config's mechanism runs on a random subset of that many records, batches
    scaled (`scaled_to`) so the sampling rates, steps, σ and claimed ε are the full run's. DP holds
    for every dataset; on a small one each canary weighs more in the average gradient, which is
    what gives the negative control its power. `reference`: a canary-free model of the same
    records (`audit_reference`), shared by several audits; None trains one like the audited run
    (`shared_reference` in the result says which)."""
    setup = audit_setup(config, features, labels, num_classes=num_classes, spec=spec)
    privacy, plan, included = setup.privacy, setup.plan, setup.included
    canary_x, canary_y = setup.canary_x, setup.canary_y
    x = torch.cat([setup.features, canary_x[included]])
    y = torch.cat([setup.labels, canary_y[included]])
    fit = dict(num_classes=num_classes, device=device, spec=spec, noise_off=spec.noise_off)
    model = _fit_audited(config, setup, x, y, **fit)
    # A reference run without any canary calibrates each canary's difficulty (as LiRA does):
    # the score is how much lower the audited model's loss is than the reference's.
    shared_reference = reference is not None
    if reference is None:
        reference = _fit_audited(config, setup, setup.features, setup.labels, **fit)
    split = privacy.split_timestep
    timesteps = [split + offset for offset in PHASE_ONE_OFFSETS] if spec.phase == "one" else [t for t in PHASE_TWO_TIMESTEPS if t < split]
    canary_records = private_records(canary_x, privacy.norm_bound)
    score_labels = torch.full_like(canary_y, model.denoiser.null_class) if spec.phase == "one" else canary_y
    objective = DenoisingObjective.of(config.diffusion)

    def losses(denoiser) -> np.ndarray:
        return -denoiser_loss_scores(
            denoiser,
            canary_records,
            score_labels,
            objective=objective,
            timesteps=timesteps,
            draws=4 * LOSS_DRAWS,
            seed=spec.seed,
            stream="canary audit loss draws",
        ).numpy()

    scores = losses(reference.denoiser) - losses(model.denoiser)
    canaries = spec.canaries
    guesses = sorted({max(2, canaries // 10), canaries // 2, canaries})
    audit = one_run_audit(scores, included.numpy(), delta=plan.delta, guess_counts=guesses)
    claimed = setup.claimed
    return {
        "phase": spec.phase,
        "noise_off": spec.noise_off,
        "reproducible_noise": privacy.reproducible_noise,
        "records": len(setup.labels),
        "noise_multiplier": None if plan.phase_two is None or spec.phase == "one" else plan.phase_two.noise_multiplier,
        "full_run_noise_multiplier": setup.full_noise_multiplier,
        "shared_reference": shared_reference,
        "claimed_epsilon": claimed if not math.isinf(claimed) else None,
        "epsilon_lower_bound": audit.epsilon_lower_bound,
        "canaries": canaries,
        "guesses": audit.guesses,
        "correct": audit.correct,
        "timesteps": [int(t) for t in timesteps],
    }
