"""The privacy experiments end to end on a small synthetic problem: an audit on a subset runs the
full run's mechanism (same rates, noise and claim); the audit catches a run whose noise is off
and does not over-audit one whose noise is on; membership attacks report every attack with the
ceiling of the claimed ε, and find the members of a non-private denoiser that memorised them.
Every run here uses reproducible (seeded) noise, so each result is the same on every run."""

import math

import pytest
import torch

from featdiff.config import config_from_dict
from featdiff.privacy.experiments import AuditSpec, audit_reference, canary_audit, membership_attacks, scaled_to
from featdiff.privacy.membership import auc_bound
from featdiff.privacy.plan import plan_privacy

CPU = torch.device("cpu")
ATTACKS = ("denoiser_loss", "lira_offline", "distance_to_release", "classifier_on_release_loss")


def small_config(epsilon: float | None, phase_two_epochs: float, **privacy):
    return config_from_dict(
        {
            "diffusion": {"schedule": "linear", "width": 64, "depth": 2, "time_dim": 16, "sample_steps": 10},
            "privacy": {
                "epsilon": epsilon,
                "delta": 1e-4,
                "norm_bound": 4.0,
                "phase_one_epochs": 2,
                "phase_one_batch": 16,
                "phase_two_epochs": phase_two_epochs,
                "phase_two_batch": 16,
                "release_per_class": 10,
                "reproducible_noise": True,
                **privacy,
            },
        }
    )


def clusters(per_class: int, classes: int = 4, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, dim, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=generator), labels


def test_an_audit_subset_keeps_the_full_runs_rates_noise_and_claim():
    config = small_config(5.0, 15, phase_one_batch=256, phase_two_batch=1024, delta=1e-5, norm_bound=8.0)
    full = plan_privacy(config.privacy, config.diffusion, 12406, 64)
    small = plan_privacy(scaled_to(config.privacy, 12406, 750), config.diffusion, 750, 64)
    for big, little in ((full.phase_one, small.phase_one), (full.phase_two, small.phase_two)):
        assert little.sample_rate == pytest.approx(big.sample_rate, rel=0.05)
        assert little.steps == pytest.approx(big.steps, rel=0.05)
    assert small.phase_two.noise_multiplier == pytest.approx(full.phase_two.noise_multiplier, rel=0.03)
    assert small.epsilon == pytest.approx(full.epsilon, rel=0.01)


def test_canary_audit_on_a_subset_reports_the_full_runs_claim():
    features, labels = clusters(40)
    config = small_config(2.0, 2)
    spec = AuditSpec("both", canaries=20, seed=0, records=80)
    result = canary_audit(config, features, labels, num_classes=4, device=CPU, spec=spec)
    assert result["records"] == 80 and result["reproducible_noise"]
    assert result["claimed_epsilon"] == pytest.approx(2.0, rel=0.02)
    assert result["noise_multiplier"] == pytest.approx(result["full_run_noise_multiplier"], rel=0.1)
    assert result["correct"] <= result["guesses"] <= 20
    with pytest.raises(ValueError, match="phase"):
        AuditSpec("three")  # type: ignore[arg-type]


# Built to memorise (found by a sweep, seed 0): 20 records and 50 canaries in 32 dimensions, 150
# Phase II epochs at lr 3e-3. The negative control then reached ε_lo 2.02 (49 of 50 guesses right;
# 2.77 is the most 50 canaries can show) against a claim of 1.0; the same run with its noise on
# ε_lo 0.29 against a reference of its own. The CLT accountant calibrates σ in milliseconds (the
# tight one takes minutes on a loaded machine).
AUDIT = {"canaries": 50, "seed": 0, "records": 20}


@pytest.mark.slow
def test_the_audit_catches_a_run_without_noise_and_not_one_with_it():
    features, labels = clusters(10, dim=32)
    config = small_config(1.0, 150, lr=3e-3, accountant="clt")
    broken = canary_audit(config, features, labels, num_classes=4, device=CPU, spec=AuditSpec("two", noise_off=True, **AUDIT))
    assert broken["claimed_epsilon"] == pytest.approx(1.0, rel=0.01)
    assert broken["epsilon_lower_bound"] > broken["claimed_epsilon"] + 0.5, broken
    assert broken["shared_reference"] is False  # it trained its own reference
    spec = AuditSpec("two", **AUDIT)
    reference = audit_reference(config, features, labels, num_classes=4, device=CPU, spec=spec)
    private = canary_audit(config, features, labels, num_classes=4, device=CPU, spec=spec, reference=reference)
    assert private["shared_reference"] is True
    assert private["epsilon_lower_bound"] < private["claimed_epsilon"], private


@pytest.mark.slow
def test_membership_attacks_report_every_attack_beside_its_ceiling():
    features, labels = clusters(30)
    config = small_config(3.0, 2)
    result = membership_attacks(config, features, labels, num_classes=4, device=CPU, shadows=2, seed=0)
    assert result["members"] + result["non_members"] > 0
    assert result["epsilon"] <= 3.0
    assert result["ceiling"]["auc"] == pytest.approx(auc_bound(result["epsilon"], config.privacy.delta))
    for attack in ATTACKS:
        metrics = result[attack]
        assert metrics["members"] == result["members"] and metrics["non_members"] == result["non_members"]
        assert metrics["auc_ci"][0] <= metrics["auc"] <= metrics["auc_ci"][1]
    with pytest.raises(ValueError, match="even"):
        membership_attacks(config, features, labels, num_classes=4, device=CPU, shadows=3)


@pytest.mark.slow
def test_membership_attacks_find_a_memorising_denoiser():
    """Not private, few records, many epochs: the loss attack must separate members clearly."""
    features, labels = clusters(25, dim=16, seed=1)
    config = small_config(None, 400, lr=3e-3)
    result = membership_attacks(config, features, labels, num_classes=4, device=CPU, shadows=2, seed=0)
    assert result["epsilon"] is None and math.isclose(result["ceiling"]["auc"], 1.0)
    assert result["denoiser_loss"]["auc_ci"][0] > 0.6 and result["lira_offline"]["auc_ci"][0] > 0.6
