"""Privacy experiments on a denoiser trained as `ldmlr_dp` trains it: membership inference and
the one-run audit. Each function trains its own models in memory from feature records.

Membership (`membership_attacks`): the records of every class are split at random in halves;
the target denoiser trains on the members only. A fifth of each half is set aside to choose the
loss attack's timesteps (never chosen on the evaluated records); the rest is attacked with the
denoiser loss, offline LiRA (shadow denoisers on random halves of all records), the distance to
the release, and the loss of a classifier trained on the release. Every result carries the
ceiling the claimed (ε, δ) puts on AUC and TPR.

Audit (`canary_audit`): m canaries — feature vectors in random directions at norm R with random
labels, far from the data — each included with probability ½; one training run; canaries scored
by how much lower their denoising loss is (shared draws, the audited phase's least noisy
timesteps) than under a reference run without canaries; ε_lo by Steinke et al.'s one-run bound.
A phase is audited alone (the other phase does not run), and the negative control trains with
the noise off while claiming the same ε.

Measured on long-tailed digits (`benchmarks/privacy_audit.py`, 200 canaries, default denoiser,
Phase II 200 epochs at lr 3e-3): the negative control gives ε_lo 2.77 above the claimed 1.0 (the
audit has power there); the private run and Phase I alone give ε_lo 0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor

from featdiff.config import ClassifierConfig, RunConfig
from featdiff.generation.pseudo import SamplerSettings
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
AUDIT_OFFSETS = (1, 5, 10, 25, 50)


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
    """Every attack's metrics against a target trained on half the records (see module docstring)."""
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
        half = halves_per_class(labels, torch.Generator().manual_seed(seed * 1000 + 100 + index))
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
) -> dict:
    """ε_lo of one training run of `phase` ("one" or "two") alone, with the phase's claimed ε."""
    if phase not in ("one", "two"):
        raise ValueError(f"phase must be 'one' or 'two', got {phase!r}")
    generator = torch.Generator().manual_seed(seed)
    canary_x, canary_y = make_canaries(canaries, features.shape[1], num_classes, config.privacy.norm_bound, generator)
    included = torch.rand(canaries, generator=generator) < 0.5
    x = torch.cat([features, canary_x[included]])
    y = torch.cat([labels, canary_y[included]])
    privacy = config.privacy
    if phase == "two":
        privacy = privacy.model_copy(update={"phase_one_epochs": 0.0})
    plan = plan_privacy(privacy, config.diffusion, len(features) + canaries // 2, features.shape[1])
    claimed = plan.epsilon
    if phase == "one":
        # Phase I alone: no Phase II step runs, and only Phase I's ε is claimed.
        claimed = plan.table()["phase_one"][plan.accountant]
        plan = dataclasses.replace(plan, phase_two=dataclasses.replace(plan.phase_two, steps=0))
    model = fit_private_generator(x, y, num_classes, privacy, config.diffusion, plan, seed, device, noise_off=noise_off)
    # A reference run without any canary calibrates each canary's difficulty (as LiRA does):
    # the score is how much lower the audited model's loss is than the reference's.
    reference = fit_private_generator(features, labels, num_classes, privacy, config.diffusion, plan, seed, device, noise_off=noise_off)
    schedule = model.schedule
    split = privacy.split_timestep
    # Memorisation shows at the least noisy timesteps of the audited phase.
    low = split if phase == "one" else 0
    timesteps = [low + offset for offset in AUDIT_OFFSETS]
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
    return {
        "phase": phase,
        "noise_off": noise_off,
        "claimed_epsilon": claimed if not math.isinf(claimed) else None,
        "epsilon_lower_bound": audit.epsilon_lower_bound,
        "canaries": canaries,
        "guesses": audit.guesses,
        "correct": audit.correct,
        "timesteps": [int(t) for t in timesteps],
    }
