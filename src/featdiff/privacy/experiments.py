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

import numpy as np
import torch
from torch import Tensor

from featdiff.config import ClassifierConfig, PrivacyConfig, RunConfig
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
from featdiff.seeding import reset_parameters
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
    config: RunConfig, features: Tensor, labels: Tensor, num_classes: int, device: torch.device, shadows: int = 4, seed: int = 0
) -> dict:
    """Every attack's metrics against a target trained on half the records (see module docstring).
    `shadows` must be even (complementary pairs of halves) or 0 (no LiRA)."""
    if shadows % 2:
        raise ValueError(f"shadows must be even (complementary pairs of halves), got {shadows}")
    generator = torch.Generator().manual_seed(seed)
    members = halves_per_class(labels, generator)
    calibration = torch.rand(len(labels), generator=generator) < 0.2
    plan = _plan(config, int(members.sum()), features.shape[1])
    diffusion, privacy = config.diffusion, config.privacy
    target = fit_private_generator(features[members], labels[members], num_classes, privacy, diffusion, plan, seed, device)
    records = private_records(features, privacy.norm_bound)
    prediction, weighting = diffusion.resolved_prediction(), diffusion.resolved_weighting()

    def loss_scores(model, timesteps) -> np.ndarray:
        scores = denoiser_loss_scores(model, records, labels, target.schedule, timesteps, LOSS_DRAWS, seed + 1, prediction, weighting)
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
            half = halves_per_class(labels, torch.Generator().manual_seed(seed * 1000 + 100 + index))
        else:
            half = ~half
        shadow_plan = _plan(config, int(half.sum()), features.shape[1])
        shadow = fit_private_generator(features[half], labels[half], num_classes, privacy, diffusion, shadow_plan, seed + 1 + index, device)
        shadow_scores.append(loss_scores(shadow.denoiser, chosen))
        shadow_mask.append(half.numpy())
    if shadows:
        lira = offline_lira_scores(target_scores, np.stack(shadow_scores), np.stack(shadow_mask))
        results["lira_offline"] = attack_metrics(lira[inside], lira[outside]) | {"shadows": shadows}

    counts = torch.full((num_classes,), privacy.release_per_class)
    released, released_labels = target.generate(counts, SamplerSettings.of(diffusion), torch.Generator(device=device).manual_seed(seed))
    clipped = records / plan.feature_scale
    distance = distance_scores(clipped, released).numpy()
    results["distance_to_release"] = attack_metrics(distance[inside], distance[outside])

    classifier = torch.nn.Linear(features.shape[1], num_classes)
    reset_parameters(classifier, torch.Generator().manual_seed(seed))
    recipe = ClassifierConfig(epochs=100, batch_size=256)
    data = WeightedFeatures(released, released_labels, torch.ones(len(released_labels)))
    train_classifier(classifier_state(classifier, len(data), recipe, torch.Generator().manual_seed(seed)), data, recipe)
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


def audit_setup(
    config: RunConfig, features: Tensor, labels: Tensor, num_classes: int, phase: str, canaries: int, seed: int, records: int | None
) -> AuditSetup:
    """The canaries and inclusion bits, then the record subset, from one seeded stream: audits with
    the same seed, canary count and subset size share canaries and records (and so a reference)."""
    if phase not in ("one", "two", "both"):
        raise ValueError(f"phase must be 'one', 'two' or 'both', got {phase!r}")
    generator = torch.Generator().manual_seed(seed)
    canary_x, canary_y = make_canaries(canaries, features.shape[1], num_classes, config.privacy.norm_bound, generator)
    included = torch.rand(canaries, generator=generator) < 0.5
    privacy = config.privacy
    if phase == "two":
        privacy = privacy.model_copy(update={"phase_one_epochs": 0.0})
    full_plan = plan_privacy(privacy, config.diffusion, len(features), features.shape[1])
    if records is not None and records < len(features):
        subset = torch.randperm(len(features), generator=generator)[:records]
        privacy = scaled_to(privacy, len(features), records + canaries // 2)
        features, labels = features[subset], labels[subset]
    plan = plan_privacy(privacy, config.diffusion, len(features) + canaries // 2, features.shape[1])
    claimed = plan.epsilon
    if phase == "one":
        # Phase I alone: no Phase II step runs, and only Phase I's ε is claimed.
        claimed = plan.table()["phase_one"][plan.accountant]
        plan = dataclasses.replace(plan, phase_two=dataclasses.replace(plan.phase_two, steps=0))
    full_sigma = None if full_plan.phase_two is None else full_plan.phase_two.noise_multiplier
    return AuditSetup(canary_x, canary_y, included, features, labels, privacy, plan, claimed, full_sigma)


def audit_reference(
    config: RunConfig,
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    device: torch.device,
    phase: str,
    canaries: int,
    seed: int,
    records: int | None,
) -> FeatureGenerator:
    """A canary-free run on the audit's records with the noise off: a reference that several audits
    of the same records can share. Any canary-free model keeps the audit valid (it is independent
    of the inclusion bits); one close to the audited runs gives the scores their power."""
    setup = audit_setup(config, features, labels, num_classes, phase, canaries, seed, records)
    return fit_private_generator(
        setup.features, setup.labels, num_classes, setup.privacy, config.diffusion, setup.plan, seed, device, noise_off=True
    )


def canary_audit(
    config: RunConfig,
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    device: torch.device,
    phase: str,
    canaries: int = 500,
    noise_off: bool = False,
    seed: int = 0,
    records: int | None = None,
    reference: FeatureGenerator | None = None,
) -> dict:
    """ε_lo of one training run of `phase` ("one" or "two" alone, or "both") with its claimed ε.

    `records`: audit the config's mechanism on a random subset of that many records instead of
    all of them, batches scaled (`scaled_to`) so the sampling rates, steps, σ and claimed ε are
    the full run's. DP holds for every dataset; on a small one each canary weighs more in the
    average gradient, which is what gives the negative control its power. `reference`: a
    canary-free model of the same records (`audit_reference`); None trains one like the audited run."""
    setup = audit_setup(config, features, labels, num_classes, phase, canaries, seed, records)
    privacy, plan, included = setup.privacy, setup.plan, setup.included
    canary_x, canary_y = setup.canary_x, setup.canary_y
    x = torch.cat([setup.features, canary_x[included]])
    y = torch.cat([setup.labels, canary_y[included]])
    model = fit_private_generator(x, y, num_classes, privacy, config.diffusion, plan, seed, device, noise_off=noise_off)
    # A reference run without any canary calibrates each canary's difficulty (as LiRA does):
    # the score is how much lower the audited model's loss is than the reference's.
    if reference is None:
        reference = fit_private_generator(
            setup.features, setup.labels, num_classes, privacy, config.diffusion, plan, seed, device, noise_off=noise_off
        )
    schedule = model.schedule
    split = privacy.split_timestep
    timesteps = [split + offset for offset in PHASE_ONE_OFFSETS] if phase == "one" else [t for t in PHASE_TWO_TIMESTEPS if t < split]
    canary_records = private_records(canary_x, privacy.norm_bound)
    score_labels = torch.full_like(canary_y, model.denoiser.null_class) if phase == "one" else canary_y
    diffusion = config.diffusion

    def losses(denoiser) -> np.ndarray:
        prediction, weighting = diffusion.resolved_prediction(), diffusion.resolved_weighting()
        draws = 4 * LOSS_DRAWS
        return -denoiser_loss_scores(
            denoiser, canary_records, score_labels, schedule, timesteps, draws, seed + 7, prediction, weighting
        ).numpy()

    scores = losses(reference.denoiser) - losses(model.denoiser)
    guesses = sorted({max(2, canaries // 10), canaries // 2, canaries})
    audit = one_run_audit(scores, included.numpy(), plan.delta, guesses)
    claimed = setup.claimed
    return {
        "phase": phase,
        "noise_off": noise_off,
        "records": len(setup.labels),
        "noise_multiplier": None if plan.phase_two is None or phase == "one" else plan.phase_two.noise_multiplier,
        "full_run_noise_multiplier": setup.full_noise_multiplier,
        "shared_reference": reference is not None,
        "claimed_epsilon": claimed if not math.isinf(claimed) else None,
        "epsilon_lower_bound": audit.epsilon_lower_bound,
        "canaries": canaries,
        "guesses": audit.guesses,
        "correct": audit.correct,
        "timesteps": [int(t) for t in timesteps],
    }
