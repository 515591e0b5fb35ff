"""DDPM and DDIM samplers: agreement with each other, exactness for Gaussian data, autograd."""

import pytest
import torch

from featdiff.diffusion.sampling import (
    SamplerSettings,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    sample_features,
)
from featdiff.diffusion.schedules import NoiseSchedule, make_schedule
from featdiff.models.denoiser import FeatureDenoiser

MU = torch.tensor([[2.0, -1.0], [-1.5, 0.5], [0.0, 2.5]], dtype=torch.float64)
COV = torch.tensor(
    [[[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.5]], [[0.05, 0.0], [0.0, 0.2]]],
    dtype=torch.float64,
)
PER_CLASS = 3000


def _alphas_cumprod(schedule: NoiseSchedule) -> torch.Tensor:
    """ᾱ from the betas by a log-sum, independently of the schedule's own cumprod."""
    return torch.exp(torch.cumsum(torch.log1p(-schedule.betas), 0))


class GaussianOracle:
    """The exact minimiser of the denoising loss for 2-D data x0 | y ~ N(μ_y, Σ_y).

    x_t = a x0 + s ε with a = √ᾱ_t, s = √(1-ᾱ_t) is jointly Gaussian with x0 and ε, so
    E[ε | x_t] = s M⁻¹ (x_t - a μ) and E[x0 | x_t] = μ + a Σ M⁻¹ (x_t - a μ), M = a²Σ + s²I;
    the 2x2 inverse is written out so that each call is a few vectorised element-wise ops.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str) -> None:
        self.alphas_cumprod = _alphas_cumprod(schedule)
        self.prediction = prediction

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod[t]
        a, s = ac.sqrt(), (1 - ac).sqrt()
        mu, cov = MU[y], COV[y]
        p = a**2 * cov[:, 0, 0] + s**2
        q = a**2 * cov[:, 0, 1]
        r = a**2 * cov[:, 1, 1] + s**2
        d = x_t.double() - a[:, None] * mu
        m_inv_d = torch.stack([r * d[:, 0] - q * d[:, 1], p * d[:, 1] - q * d[:, 0]], 1) / (p * r - q**2)[:, None]
        if self.prediction == "eps":
            out = s[:, None] * m_inv_d
        else:
            out = mu + a[:, None] * torch.einsum("bij,bj->bi", cov, m_inv_d)
        return out.to(x_t.dtype)


def _random_denoiser(seed: int, feature_dim: int = 4, num_classes: int = 3) -> FeatureDenoiser:
    """Non-zero weights everywhere, so that no zero-initialised layer hides a path."""
    torch.manual_seed(seed)
    model = FeatureDenoiser(feature_dim, num_classes, width=32, depth=2, time_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _predicted_moments(schedule: NoiseSchedule, sampler: str, steps: int, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact mean and covariance of the sampler's output under `GaussianOracle`.

    With the exact denoiser each step is affine in d = x_t - √ᾱ_t μ and acts separately along
    each eigenvector of Σ (eigenvalue λ): d' = c d + σ z, with, from the textbook formulas,
      DDPM:  c = coef1 a λ / (a²λ + s²) + coef2,  σ² = β̃_t,
      DDIM:  c = (a' a λ + √(1 - ᾱ' - σ²) s) / (a²λ + s²),  σ = η √((1-ᾱ')/(1-ᾱ) (1-ᾱ/ᾱ')).
    Starting from x_T ~ N(0, I), i.e. d_T ~ N(-a_T μ, I), the recursion gives the exact output
    moments, so the samples can be checked tightly and the discretisation error separately.
    """
    ac_all = _alphas_cumprod(schedule)
    T = ac_all.shape[0]
    if sampler == "ddpm":
        ts = list(range(T - 1, -1, -1))
    else:
        ts = [round((T - 1) * (1 - i / (steps - 1))) for i in range(steps)]
    eigvals, eigvecs = torch.linalg.eigh(COV)
    mean_d = -ac_all[ts[0]].sqrt() * (eigvecs.transpose(1, 2) @ MU[:, :, None])[:, :, 0]
    var_d = torch.ones_like(eigvals)
    for i, t in enumerate(ts):
        ac = ac_all[t]
        ac_prev = ac_all[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        a, s, a_prev = ac.sqrt(), (1 - ac).sqrt(), ac_prev.sqrt()
        m = a**2 * eigvals + s**2
        if sampler == "ddpm":
            beta = 1 - ac / ac_prev
            coef1 = beta * a_prev / (1 - ac)
            coef2 = (1 - ac_prev) * (1 - beta).sqrt() / (1 - ac)
            c = coef1 * a * eigvals / m + coef2
            sigma2 = beta * (1 - ac_prev) / (1 - ac)
        else:
            sigma2 = eta**2 * (1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev)
            c = (a_prev * a * eigvals + (1 - ac_prev - sigma2).clamp(min=0).sqrt() * s) / m
        mean_d = c * mean_d
        var_d = c**2 * var_d + sigma2
    mean = MU + (eigvecs @ mean_d[:, :, None])[:, :, 0]
    cov = eigvecs @ torch.diag_embed(var_d) @ eigvecs.transpose(1, 2)
    return mean, cov


def _whitened_error(samples: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """max |L⁻¹ Ŝ L⁻ᵀ - I| with L Lᵀ = cov: scale-free, ≈ N(0, 2/n) per entry when Ŝ ~ cov."""
    chol = torch.linalg.cholesky(cov)
    whitened = torch.linalg.solve_triangular(chol, (samples - samples.mean(0)).T, upper=False)
    return (whitened.cov() - torch.eye(2, dtype=torch.float64)).abs().max()


def _check_against_gaussians(
    samples: torch.Tensor, y: torch.Tensor, predicted_mean: torch.Tensor, predicted_cov: torch.Tensor, cov_tol: float
) -> None:
    for c in range(MU.shape[0]):
        x = samples[y == c].double()
        sd = COV[c].diagonal().sqrt()
        # 1) The samples follow the sampler's exact output law (statistical tolerance only:
        #    5 standard errors for the mean, ~4.6 for whitened covariance entries at n=3000).
        assert ((x.mean(0) - predicted_mean[c]).abs() <= 5 * sd / PER_CLASS**0.5).all()
        assert _whitened_error(x, predicted_cov[c]) < 0.12
        # 2) That law is the data's up to the sampler's discretisation error.
        assert ((x.mean(0) - MU[c]).abs() <= 5 * sd / PER_CLASS**0.5).all(), (c, x.mean(0))
        assert _whitened_error(x, COV[c]) < cov_tol, (c, x.T.cov(), COV[c])


@pytest.mark.parametrize(("kind", "prediction"), [("cosine", "eps"), ("linear", "x0")])
def test_ddpm_with_optimal_denoiser_recovers_gaussians(kind: str, prediction: str) -> None:
    schedule = make_schedule(kind, 1000)
    y = torch.arange(3).repeat_interleave(PER_CLASS)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(y.shape[0], 2, generator=gen, dtype=torch.float64)
    oracle = GaussianOracle(schedule, prediction)
    samples = ddpm_sample(oracle, y, 2, schedule, prediction, generator=gen, noise=noise)
    # β̃ is the exact reverse variance only for point-mass data; for N(μ, λ) it is slightly too
    # small, by < 4 % here.
    _check_against_gaussians(samples, y, *_predicted_moments(schedule, "ddpm", 1000, 1.0), cov_tol=0.15)


@pytest.mark.parametrize(
    ("kind", "prediction", "eta", "cov_tol"),
    [("cosine", "eps", 0.0, 0.2), ("linear", "x0", 0.0, 0.3), ("cosine", "eps", 1.0, 0.3)],
)
def test_ddim_50_steps_with_optimal_denoiser_recovers_gaussians(kind: str, prediction: str, eta: float, cov_tol: float) -> None:
    """50 DDIM steps shrink the variance of narrow classes (by up to ~20 % for λ = 0.05 on the
    linear schedule, ~10 % on the cosine one with η = 0): first-order steps, not a bug."""
    schedule = make_schedule(kind, 1000)
    y = torch.arange(3).repeat_interleave(PER_CLASS)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(y.shape[0], 2, generator=gen, dtype=torch.float64)
    samples = ddim_sample(
        GaussianOracle(schedule, prediction),
        y,
        2,
        schedule,
        steps=50,
        eta=eta,
        prediction=prediction,
        generator=gen,
        noise=noise,
    )
    _check_against_gaussians(samples, y, *_predicted_moments(schedule, "ddim", 50, eta), cov_tol=cov_tol)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
def test_ddim_eta1_all_steps_equals_ddpm(prediction: str, clip: tuple[float, float] | None) -> None:
    schedule = make_schedule("cosine", 100)
    model = _random_denoiser(0)
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    ddpm = ddpm_sample(model, y, 4, schedule, prediction, clip=clip, generator=torch.Generator().manual_seed(2))
    ddim = ddim_sample(
        model,
        y,
        4,
        schedule,
        steps=100,
        eta=1.0,
        prediction=prediction,
        clip=clip,
        generator=torch.Generator().manual_seed(2),
    )
    assert ddpm.abs().max() > 0.1
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)


def test_ddim_eta0_is_deterministic_given_noise() -> None:
    schedule = make_schedule("cosine", 1000)
    model = _random_denoiser(3)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(4))
    noise = torch.randn(32, 4, generator=torch.Generator().manual_seed(5))
    gen_a, gen_b = torch.Generator().manual_seed(6), torch.Generator().manual_seed(7)
    state_a = gen_a.get_state()
    first = ddim_sample(model, y, 4, schedule, steps=20, generator=gen_a, noise=noise)
    second = ddim_sample(model, y, 4, schedule, steps=20, generator=gen_b, noise=noise)
    assert torch.equal(first, second)
    assert torch.equal(gen_a.get_state(), state_a), "η=0 with given noise must draw nothing"
    stochastic = ddim_sample(model, y, 4, schedule, steps=20, eta=1.0, generator=gen_a, noise=noise)
    assert not torch.equal(first, stochastic)


def test_ddim_timesteps_are_even_and_span_the_schedule() -> None:
    for steps in (1, 2, 7, 50, 1000):
        ts = ddim_timesteps(1000, steps)
        assert ts.shape == (steps,) and ts[0] == 999
        assert ts.unique().numel() == steps
        if steps > 1:
            assert ts[-1] == 0
            gaps = -ts.diff()
            assert gaps.max() - gaps.min() <= 1
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clipping_bounds_the_samples(sampler: str) -> None:
    """At the last step the output is the clipped x̂0 (LDMLR's features all end up in [0, 1])."""
    schedule = make_schedule("cosine", 100)
    model = _random_denoiser(8)
    y = torch.randint(0, 3, (128,), generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(10)
    if sampler == "ddpm":
        out = ddpm_sample(model, y, 4, schedule, "x0", clip=(-1.0, 1.0), generator=gen)
    else:
        out = ddim_sample(model, y, 4, schedule, steps=10, prediction="x0", clip=(-1.0, 1.0), generator=gen)
    assert out.abs().max() <= 1.0
    unclipped = ddpm_sample(model, y, 4, schedule, "x0", generator=torch.Generator().manual_seed(10))
    assert unclipped.abs().max() > 1.0


def test_differentiable_ddim_propagates_gradients() -> None:
    schedule = make_schedule("cosine", 1000)
    model = _random_denoiser(11)
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(12))
    noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(13), requires_grad=True)
    out = ddim_sample(model, y, 4, schedule, steps=5, noise=noise, differentiable=True)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert noise.grad is not None and noise.grad.abs().sum() > 0

    frozen = ddim_sample(model, y, 4, schedule, steps=5, noise=noise.detach())
    assert frozen.grad_fn is None and not frozen.requires_grad


def test_sample_features_chunks_and_returns_ordinary_tensors() -> None:
    schedule = make_schedule("cosine", 100)
    model = _random_denoiser(14).train()
    labels = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(15))
    whole = sample_features(
        model,
        labels,
        feature_dim=4,
        schedule=schedule,
        sampler=SamplerSettings("ddim", steps=10, eta=1.0),
        generator=torch.Generator().manual_seed(16),
        chunk_size=64,
        progress=False,
    )
    direct = ddim_sample(model, labels, 4, schedule, steps=10, eta=1.0, generator=torch.Generator().manual_seed(16))
    torch.testing.assert_close(whole, direct, rtol=0, atol=0)
    assert model.training, "the caller's train mode must be restored"

    ddpm = SamplerSettings("ddpm")
    chunked = sample_features(model, labels, feature_dim=4, schedule=schedule, sampler=ddpm, chunk_size=7, progress=False)
    assert chunked.shape == (50, 4) and torch.isfinite(chunked).all()
    # Inference tensors cannot be saved for backward; a classifier is trained on these.
    assert not chunked.is_inference()
    head = torch.nn.Linear(4, 3)
    torch.nn.functional.cross_entropy(head(chunked), labels).backward()
    assert head.weight.grad is not None
