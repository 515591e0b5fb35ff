"""Schedules against their closed forms, computed independently in Python floats."""

import math

import pytest
import torch

from featdiff.diffusion.schedules import (
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    make_schedule,
)


def _cosine_f(t: float, num_steps: int, s: float) -> float:
    return math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("num_steps", [10, 1000])
def test_cosine_alphas_cumprod_is_f_ratio_until_clipping(num_steps: int) -> None:
    s = 0.008
    betas = cosine_betas(num_steps, s=s)
    expected = torch.tensor(
        [_cosine_f(t + 1, num_steps, s) / _cosine_f(0, num_steps, s) for t in range(num_steps)],
        dtype=torch.float64,
    )
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    # Only the last step, where f(T) = 0 would give β = 1, is clipped at max_beta = 0.999.
    torch.testing.assert_close(alphas_cumprod[:-1], expected[:-1], rtol=1e-12, atol=0)
    assert betas[-1].item() == pytest.approx(0.999, abs=1e-15)
    assert betas.dtype == torch.float64


def test_cosine_betas_are_clipped_at_max_beta() -> None:
    num_steps, s, max_beta = 50, 0.008, 0.05
    expected = torch.tensor(
        [min(1 - _cosine_f(t + 1, num_steps, s) / _cosine_f(t, num_steps, s), max_beta) for t in range(num_steps)],
        dtype=torch.float64,
    )
    betas = cosine_betas(num_steps, s=s, max_beta=max_beta)
    torch.testing.assert_close(betas, expected, rtol=1e-12, atol=1e-15)
    assert (betas == max_beta).sum() > 1


def test_cosine_first_beta_matches_ldmlr_value() -> None:
    # The reference report gives β₁ ≈ 4.1e-5 and SNR ≈ 24221 at t=0 for T=1000.
    schedule = make_schedule("cosine", 1000)
    assert schedule.betas[0].item() == pytest.approx(4.1e-5, rel=0.01)
    ac0 = schedule.alphas_cumprod[0].item()
    assert ac0 / (1 - ac0) == pytest.approx(24221, rel=1e-3)


def test_linear_endpoints_and_spacing() -> None:
    betas = linear_betas(1000)
    assert betas[0].item() == 1e-4
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    torch.testing.assert_close(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    short = linear_betas(10, beta_start=0.1, beta_end=0.2)
    assert short[0].item() == 0.1 and short[-1].item() == pytest.approx(0.2, abs=1e-15)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_monotonic(kind: str) -> None:
    schedule = make_schedule(kind, 1000)
    assert (schedule.betas.diff() >= 0).all()
    assert (schedule.alphas_cumprod.diff() < 0).all()
    assert 0 < schedule.alphas_cumprod[-1] < schedule.alphas_cumprod[0] < 1


def test_derived_arrays_match_direct_formulas() -> None:
    betas = torch.linspace(0.01, 0.3, 7, dtype=torch.float64)
    schedule = NoiseSchedule.from_betas(betas)
    assert schedule.num_steps == 7
    ac = [math.prod(1 - b for b in betas.tolist()[: t + 1]) for t in range(7)]
    ac_prev = [1.0] + ac[:-1]
    torch.testing.assert_close(schedule.alphas_cumprod, torch.tensor(ac, dtype=torch.float64))
    torch.testing.assert_close(schedule.alphas_cumprod_prev, torch.tensor(ac_prev, dtype=torch.float64))
    variance = [b * (1 - p) / (1 - a) for b, a, p in zip(betas.tolist(), ac, ac_prev, strict=True)]
    torch.testing.assert_close(schedule.posterior_variance, torch.tensor(variance, dtype=torch.float64))
    clipped_log = [math.log(variance[1])] + [math.log(v) for v in variance[1:]]
    torch.testing.assert_close(schedule.posterior_log_variance_clipped, torch.tensor(clipped_log, dtype=torch.float64))


def test_gather_shape_dtype_and_values() -> None:
    schedule = make_schedule("cosine", 100)
    t = torch.tensor([0, 99, 42])
    like = torch.zeros(3, 5, dtype=torch.float32)
    out = schedule.gather("alphas_cumprod", t, like)
    assert out.shape == (3, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], schedule.alphas_cumprod[t].float())
    out3 = schedule.gather(schedule.betas, t, torch.zeros(3, 2, 4, dtype=torch.float64))
    assert out3.shape == (3, 1, 1)
    torch.testing.assert_close(out3.flatten(), schedule.betas[t])


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError):
        make_schedule("sigmoid", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NoiseSchedule.from_betas(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError):
        linear_betas(10, beta_start=0.2, beta_end=0.1)
