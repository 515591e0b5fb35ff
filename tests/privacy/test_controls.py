"""The private controls: sensitivities by hand, budgets that compose to the target, the linear
head's closed-form clipped gradients against autograd, and runs whose noise nobody can replay."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from featdiff.config import PrivacyConfig, config_from_dict
from featdiff.pipeline import execute
from featdiff.privacy.accounting import tight_epsilon
from featdiff.privacy.controls import head_gradient, moment_sensitivities, plan_control, release_moments
from featdiff.runs import Run
from featdiff.statistics import SufficientStatistics


@pytest.mark.parametrize("adjacency", ["replace_one", "add_remove_one"])
def test_one_record_moves_the_stacked_moments_by_at_most_the_sensitivity(adjacency):
    """Random neighbouring datasets of records in the ball of radius R: the change of the stacked
    class sums and outer-product sums never exceeds the stated sensitivity, and comes close."""
    radius, generator = 3.0, torch.Generator().manual_seed(0)
    sum_bound, outer_bound = moment_sensitivities(adjacency, radius)
    worst_sum = worst_outer = 0.0
    for _ in range(300):
        x = torch.randn(20, 5, generator=generator, dtype=torch.float64)
        x = x * (radius / x.norm(dim=1, keepdim=True)) * torch.rand(20, 1, generator=generator, dtype=torch.float64).sqrt().clamp(0.9)
        y = torch.randint(0, 3, (20,), generator=generator)
        if adjacency == "replace_one":
            x2, y2 = x.clone(), y.clone()
            x2[0] = -x[0] * torch.rand(1, generator=generator, dtype=torch.float64).clamp(0.9)
            y2[0] = int(torch.randint(0, 3, (1,), generator=generator))
        else:
            x2, y2 = x[1:], y[1:]
        a, b = SufficientStatistics.of(x, y, 3), SufficientStatistics.of(x2, y2, 3)
        worst_sum = max(worst_sum, float((a.sums - b.sums).norm()))
        worst_outer = max(worst_outer, float((a.outer - b.outer).norm()))
    assert worst_sum <= sum_bound + 1e-9 and worst_sum > 0.8 * sum_bound
    assert worst_outer <= outer_bound + 1e-9 and worst_outer > 0.6 * outer_bound


@pytest.mark.parametrize("control", ["dp_linear", "dp_gaussian"])
@pytest.mark.parametrize("epsilon", [1.0, 10.0])
def test_the_mechanisms_compose_to_the_target_and_the_counts_to_their_share(control, epsilon):
    privacy = PrivacyConfig(epsilon=epsilon, delta=1e-5, count_share=0.2, linear_epochs=5)
    plan = plan_control(control, privacy, 12000)
    assert 0.99 * epsilon <= plan.epsilon <= epsilon
    assert tight_epsilon([plan.counts.mechanism], 1e-5) == pytest.approx(0.2 * epsilon, rel=0.01)
    assert (plan.sums is not None) == (control == "dp_gaussian")
    if control == "dp_linear":  # replace-one (the default): the clipped sum is accounted with the replace-one pair at σ
        assert plan.sgd.relation == "replace_one" and plan.sgd_noise_multiplier == plan.sgd.noise_multiplier


def test_a_release_beside_dp_sgd_spends_its_share_first():
    privacy = PrivacyConfig(epsilon=8.0, delta=1e-5, count_share=0.1, release_share=0.5, linear_release="gaussian", linear_epochs=5)
    plan = plan_control("dp_linear", privacy, 12000)
    released = [plan.counts.mechanism, plan.sums.mechanism, plan.moments.mechanism]
    assert tight_epsilon(released, 1e-5) == pytest.approx(4.0, rel=0.01)
    assert 0.99 * 8.0 <= plan.epsilon <= 8.0
    # The sums get 70 % of the moments' GDP budget: μ_sums² / (μ_sums² + μ_outer²) = 0.7.
    mu_sums, mu_outer = 1 / plan.sums.noise_multiplier, 1 / plan.moments.noise_multiplier
    assert mu_sums**2 / (mu_sums**2 + mu_outer**2) == pytest.approx(0.7)


def test_a_private_plan_refuses_a_delta_above_one_over_n():
    with pytest.raises(Exception, match="below 1/N"):
        plan_control("dp_linear", PrivacyConfig(epsilon=1.0, delta=1e-3), 2000)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_the_closed_form_clipped_gradient_sum_matches_autograd(clip):
    generator = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(6, 4).double()
    x, y = torch.randn(30, 6, generator=generator, dtype=torch.float64), torch.randint(0, 4, (30,), generator=generator)
    offsets = torch.randn(4, generator=generator, dtype=torch.float64)
    ours, norms = head_gradient(head, x, y, offsets, clip)
    expected = {"weight": torch.zeros(4, 6, dtype=torch.float64), "bias": torch.zeros(4, dtype=torch.float64)}
    for i in range(30):
        head.zero_grad()
        torch.nn.functional.cross_entropy(head(x[i : i + 1]) + offsets, y[i : i + 1]).backward()
        norm = math.sqrt(float(head.weight.grad.square().sum() + head.bias.grad.square().sum()))
        assert norms[i] == pytest.approx(norm)
        factor = 1.0 if clip is None else min(1.0, clip / norm)
        expected["weight"] += factor * head.weight.grad
        expected["bias"] += factor * head.bias.grad
    torch.testing.assert_close(ours["weight"], expected["weight"])
    torch.testing.assert_close(ours["bias"], expected["bias"])


def test_released_moments_carry_the_planned_noise():
    privacy = PrivacyConfig(epsilon=2.0, delta=1e-5)
    plan = plan_control("dp_gaussian", privacy, 10000)
    records, labels = torch.zeros(100, 8, dtype=torch.float64), torch.zeros(100, dtype=torch.long)
    released = release_moments(records, labels, torch.tensor([100.0, 0.0]), plan, torch.Generator().manual_seed(0))
    assert float(released.sums.std()) == pytest.approx(plan.sums.std, rel=0.2)
    off_diagonal = released.outer[:, ~torch.eye(8, dtype=torch.bool)]
    # Symmetrising averages two independent draws: std/√2 off the diagonal.
    assert float(off_diagonal.std()) == pytest.approx(plan.moments.std / math.sqrt(2), rel=0.15)


def _digits_control(tmp_path, encoder: str, name: str, method: str, **privacy) -> tuple[dict, Run]:
    values = {
        "name": name,
        "method": method,
        "data": {"dataset": "digits"},
        "encoder": {"checkpoint": encoder},
        "classifier": {"epochs": 10},
        "evaluation": {"controls": False},
        "privacy": {"epsilon": 5.0, "delta": 1e-6, **privacy},
    }
    run = Run.create(tmp_path / name, config_from_dict(values))
    return execute(run), run


@pytest.mark.parametrize(("method", "file"), [("dp_linear", "dp_head.safetensors"), ("dp_gaussian", "dp_pseudo_features.safetensors")])
def test_a_private_control_cannot_be_replayed_unless_asked_and_then_says_so(tmp_path, digits_encoder, method, file):
    first, first_run = _digits_control(tmp_path, digits_encoder, "a", method)
    second, second_run = _digits_control(tmp_path, digits_encoder, "b", method)
    assert first["privacy"]["reproducible_noise"] is False and "entropy" in first["privacy"]["noise_source"]
    assert first["privacy"]["epsilon"] <= 5.0 and file in first["privacy"]["covered_files"]
    assert "blended" not in first  # no mix with the non-private shipped head in a private run
    a, b = load_file(first_run.path(file)), load_file(second_run.path(file))
    assert any(not torch.equal(a[key], b[key]) for key in a)
    seeded = [_digits_control(tmp_path, digits_encoder, name, method, reproducible_noise=True)[1] for name in ("c", "d")]
    assert seeded[0].path(file).read_bytes() == seeded[1].path(file).read_bytes()
    ledger = json.loads(seeded[0].path("results.json").read_text())["privacy"]
    assert "does not hold against anyone who knows the seed" in ledger["covers"]


@pytest.mark.parametrize("noise_multiplier", [0.5, 2.0, 8.0])
def test_a_one_shot_release_is_accounted_as_the_exact_gaussian_mechanism(noise_multiplier):
    """PRV at sampling rate 1 against the Gaussian mechanism's closed form (Balle & Wang 2018:
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), μ = 1/z)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    mu, delta = 1 / noise_multiplier, 1e-5

    def exact_delta(eps):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)

    exact = brentq(lambda eps: exact_delta(eps) - delta, 1e-9, 200.0)
    from featdiff.privacy.accounting import SubsampledGaussian

    assert tight_epsilon([SubsampledGaussian(noise_multiplier, 1.0, 1)], delta) == pytest.approx(exact, rel=0.01)
