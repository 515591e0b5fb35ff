"""The forward process and its inversions against independent float64 computations."""

import pytest
import torch
from torch import Tensor

from featdiff.diffusion.process import (
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_sample,
    snr,
)
from featdiff.diffusion.schedules import NoiseSchedule, make_schedule


def posterior_mean_variance(x0: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_{t-1} | x_t, x0): the Gaussian that ancestral sampling draws from once x0 is replaced by
    the model's estimate. Variance and log-variance come back shaped (B, 1, ...) for broadcasting;
    the log-variance is clipped at t=0, where the true variance is 0."""
    mean = schedule.gather("posterior_mean_coef1", t, x_t) * x0 + schedule.gather("posterior_mean_coef2", t, x_t) * x_t
    variance = schedule.gather("posterior_variance", t, x_t)
    log_variance = schedule.gather("posterior_log_variance_clipped", t, x_t)
    return mean, variance, log_variance


def _alphas_cumprod_reference(schedule) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t}(1-β_s) by an explicit float64 product over log(1-β), not the schedule's cumprod."""
    return torch.exp(torch.cumsum(torch.log1p(-schedule.betas), 0))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_moments(kind: str) -> None:
    schedule = make_schedule(kind, 1000)
    gen = torch.Generator().manual_seed(0)
    n, t_value = 200_000, 300
    x0 = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64).expand(n, 3)
    t = torch.full((n,), t_value)
    x_t = q_sample(x0, t, torch.randn(n, 3, generator=gen, dtype=torch.float64), schedule)
    ac = _alphas_cumprod_reference(schedule)[t_value].item()
    torch.testing.assert_close(x_t.mean(0), x0[0] * ac**0.5, atol=5 * ((1 - ac) / n) ** 0.5, rtol=0)
    torch.testing.assert_close(x_t.var(0), torch.full((3,), 1 - ac, dtype=torch.float64), rtol=0.02, atol=0)


def test_q_sample_is_the_closed_form_per_sample() -> None:
    schedule = make_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    noise = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=gen)
    ac = _alphas_cumprod_reference(schedule)[t][:, None]
    torch.testing.assert_close(q_sample(x0, t, noise, schedule), ac.sqrt() * x0 + (1 - ac).sqrt() * noise)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_x0_eps_inversions_round_trip(dtype: torch.dtype) -> None:
    schedule = make_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(256, 8, generator=gen, dtype=dtype)
    noise = torch.randn(256, 8, generator=gen, dtype=dtype)
    # Away from t≈T-1, where recovering x0 from ε amplifies rounding by 1/√ᾱ ≈ 2e4 in float32.
    t = torch.randint(0, 900, (256,), generator=gen)
    x_t = q_sample(x0, t, noise, schedule)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(predict_x0_from_eps(x_t, t, noise, schedule), x0, **tol)
    torch.testing.assert_close(predict_eps_from_x0(x_t, t, x0, schedule), noise, **tol)


def test_inversions_are_exact_in_float64_over_all_t() -> None:
    schedule = make_schedule("linear", 1000)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(1000, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(1000, 4, generator=gen, dtype=torch.float64)
    t = torch.arange(1000)
    x_t = q_sample(x0, t, noise, schedule)
    torch.testing.assert_close(predict_eps_from_x0(x_t, t, x0, schedule), noise, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(predict_x0_from_eps(x_t, t, noise, schedule), x0, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_matches_gaussian_conditioning(kind: str) -> None:
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): a product of two Gaussians in x_{t-1},
    N(√α_t x_{t-1}, β_t) as a likelihood and N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}) as a prior."""
    schedule = make_schedule(kind, 1000)
    gen = torch.Generator().manual_seed(4)
    n = 512
    x0 = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    x_t = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    t = torch.randint(1, 1000, (n,), generator=gen)
    ac = _alphas_cumprod_reference(schedule)
    beta = schedule.betas[t][:, None]
    ac_prev = ac[t - 1][:, None]
    precision = 1 / (1 - ac_prev) + (1 - beta) / beta
    expected_var = 1 / precision
    expected_mean = expected_var * (ac_prev.sqrt() * x0 / (1 - ac_prev) + (1 - beta).sqrt() * x_t / beta)

    mean, var, log_var = posterior_mean_variance(x0, x_t, t, schedule)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(var, expected_var, rtol=1e-9, atol=0)
    torch.testing.assert_close(log_var, expected_var.log(), rtol=1e-9, atol=1e-9)


def test_posterior_at_t0_is_the_data_point() -> None:
    schedule = make_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    x_t = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    t = torch.zeros(8, dtype=torch.long)
    mean, var, log_var = posterior_mean_variance(x0, x_t, t, schedule)
    torch.testing.assert_close(mean, x0, rtol=0, atol=1e-12)
    assert (var == 0).all()
    # Clipped to the t=1 value so that it stays finite.
    assert torch.isfinite(log_var).all()
    torch.testing.assert_close(log_var, posterior_mean_variance(x0, x_t, t + 1, schedule)[2])


def test_snr_is_alpha_bar_ratio() -> None:
    schedule = make_schedule("cosine", 1000)
    t = torch.tensor([0, 1, 500, 999])
    ac = _alphas_cumprod_reference(schedule)[t]
    torch.testing.assert_close(snr(t, schedule), ac / (1 - ac), rtol=1e-9, atol=0)
