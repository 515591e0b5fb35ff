"""The denoising objective at explicit draws: oracle models, weights at the drawn t, the K-draw
average, both views of a prediction, and per-example independence on the real denoiser."""

import pytest
import torch

from featdiff.config import DiffusionConfig
from featdiff.diffusion.objective import DenoisingObjective, denoise, denoising_loss, draw_timesteps_and_noise, loss_weight
from featdiff.diffusion.parameterization import model_x0_and_eps
from featdiff.diffusion.schedules import make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.seeding import reset_parameters

T = 1000


def _alpha_bar(schedule) -> torch.Tensor:
    """ᾱ from the betas by a log-sum, independently of the schedule's own cumprod."""
    return torch.exp(torch.cumsum(torch.log1p(-schedule.betas), 0))


def _q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule) -> torch.Tensor:
    """x_t for x0 (B, D), t (B, K), noise (B, K, D), from the independent ᾱ."""
    ac = _alpha_bar(schedule)[t].to(x0.dtype)[..., None]
    return ac.sqrt() * x0[:, None] + (1 - ac).sqrt() * noise


@pytest.mark.parametrize("draws", [1, 3])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("weighting", ["none", "snr", "min_snr"])
def test_oracle_model_has_zero_loss(prediction: str, weighting: str, draws: int) -> None:
    schedule = make_schedule("cosine", T)
    x0 = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(32, dtype=torch.long)
    t, noise = draw_timesteps_and_noise(32, 6, T, draws=draws, generator=torch.Generator().manual_seed(7))
    target = noise if prediction == "eps" else x0[:, None].expand_as(noise)

    def oracle(x_t: torch.Tensor, t_: torch.Tensor, y_: torch.Tensor) -> torch.Tensor:
        return target

    result = denoise(oracle, x0, y, t, noise, schedule, prediction, weighting)
    assert result.loss.shape == (32,)
    assert (result.loss == 0).all()
    assert result.x0_estimate.shape == (32, draws, 6)
    if prediction == "x0":  # the ε view is checked in float64 below (float32 cancels near t = T)
        assert torch.equal(result.x0_estimate, x0[:, None].expand_as(noise))


def test_x0_estimate_of_an_eps_oracle_is_the_clean_sample_in_float64() -> None:
    schedule = make_schedule("linear", T)
    gen = torch.Generator().manual_seed(12)
    x0 = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    t, noise = draw_timesteps_and_noise(64, 5, T, draws=2, generator=gen, dtype=torch.float64)
    result = denoise(lambda x_t, t_, y_: noise, x0, torch.zeros(64, dtype=torch.long), t, noise, schedule, "eps")
    torch.testing.assert_close(result.x0_estimate, x0[:, None].expand_as(noise), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("draws", [1, 2])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_weights_at_the_drawn_t(prediction: str, draws: int) -> None:
    """A model off by exactly 1 in every coordinate has MSE 1 per draw, so the loss is the mean of
    the weights at the example's draws."""
    schedule = make_schedule("cosine", T)
    batch, dim, gamma = 2048, 3, 5.0
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, dim, generator=gen)
    y = torch.randint(0, 4, (batch,), generator=gen)
    t, noise = draw_timesteps_and_noise(batch, dim, T, draws=draws, generator=gen)
    target = noise if prediction == "eps" else x0[:, None].expand_as(noise)

    def off_by_one(x_t: torch.Tensor, t_: torch.Tensor, y_: torch.Tensor) -> torch.Tensor:
        assert torch.equal(t_, t) and torch.equal(y_, y[:, None].expand(batch, draws))
        torch.testing.assert_close(x_t, _q_sample(x0, t, noise, schedule))
        return target + 1

    ac = _alpha_bar(schedule)[t]
    ratio = ac / (1 - ac)
    expected = {
        "none": torch.ones(batch, draws, dtype=torch.float64),
        "snr": ratio,
        "min_snr": ratio.clamp(max=gamma) / (ratio if prediction == "eps" else 1.0),
    }
    for weighting, weight in expected.items():
        loss = denoising_loss(off_by_one, x0, y, t, noise, schedule, prediction, weighting, min_snr_gamma=gamma)
        assert loss.shape == (batch,) and loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), weight.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss_weight(t, schedule, prediction, weighting, gamma), weight, rtol=1e-10, atol=0)


def test_k_draws_average_the_single_draw_losses() -> None:
    """The loss of an example with K draws is the mean of its K one-draw losses, and (B,) / (B, D)
    draws mean K = 1."""
    schedule = make_schedule("cosine", T)
    model = _random_denoiser(13)
    gen = torch.Generator().manual_seed(14)
    x0 = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=gen)
    t, noise = draw_timesteps_and_noise(5, 4, T, draws=3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        loss = denoising_loss(model, x0, y, t, noise, schedule, "x0", "min_snr")
        singles = torch.stack([denoising_loss(model, x0, y, t[:, k], noise[:, k], schedule, "x0", "min_snr") for k in range(3)], 1)
        flat = denoising_loss(model, x0, y, t[:, :1], noise[:, :1], schedule, "x0", "min_snr")
    torch.testing.assert_close(loss, singles.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(singles[:, 0], flat, rtol=1e-12, atol=1e-12)


def test_snr_weighted_x0_loss_equals_unweighted_eps_loss() -> None:
    """LDMLR's objective: ‖x0 - x̂0‖² SNR(t) = ‖ε - ε̂‖² when ε̂ is derived from x̂0."""
    schedule = make_schedule("cosine", T)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(256, 4, generator=gen, dtype=torch.float64)
    t, noise = draw_timesteps_and_noise(256, 4, T, draws=2, generator=gen, dtype=torch.float64, high=900)
    y = torch.zeros(256, dtype=torch.long)
    perturbation = 0.1 * torch.randn(256, 2, 4, generator=gen, dtype=torch.float64)

    def x0_model(x_t, t_, y_):
        return x0[:, None] + perturbation

    def eps_model(x_t, t_, y_):
        return model_x0_and_eps(x0_model(x_t, t_, y_), x_t, t_, "x0", schedule)[1]

    weighted = denoising_loss(x0_model, x0, y, t, noise, schedule, "x0", "snr")
    plain = denoising_loss(eps_model, x0, y, t, noise, schedule, "eps", "none")
    torch.testing.assert_close(weighted, plain, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_model_x0_and_eps_recovers_both_from_either(prediction: str) -> None:
    schedule = make_schedule("linear", T)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(128, 5, generator=gen, dtype=torch.float64)
    t, noise = draw_timesteps_and_noise(128, 5, T, draws=2, generator=gen, dtype=torch.float64)
    x_t = _q_sample(x0, t, noise, schedule)
    clean = x0[:, None].expand_as(noise)
    output = noise if prediction == "eps" else clean
    x0_hat, eps_hat = model_x0_and_eps(output, x_t, t, prediction, schedule)
    torch.testing.assert_close(x0_hat, clean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-8, atol=1e-8)


def _random_denoiser(seed: int) -> FeatureDenoiser:
    """The real network with default initialisation everywhere (the zero-initialised layers too),
    in float64."""
    model = FeatureDenoiser(4, 3, width=32, depth=2, time_dim=16)
    reset_parameters(model, torch.Generator().manual_seed(seed))
    return model.double()


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_per_example_losses_are_independent(prediction: str) -> None:
    """loss[i] depends on example i only, as per-example clipping (DP-SGD) requires: its gradient
    w.r.t. the real denoiser's parameters, taken inside the batch, equals the gradient of the same
    example's loss computed alone (no batch statistics, no cross-example coupling), and its gradient
    w.r.t. x0 vanishes on every other example."""
    schedule = make_schedule("cosine", T)
    model = _random_denoiser(4)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(5)
    batch = 8
    x0 = torch.randn(batch, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (batch,), generator=gen)
    t, noise = draw_timesteps_and_noise(batch, 4, T, draws=3, generator=gen, dtype=torch.float64)
    loss = denoising_loss(model, x0, y, t, noise, schedule, prediction, "min_snr")
    assert loss.shape == (batch,)
    for i in range(batch):
        in_batch = torch.autograd.grad(loss[i], params + [x0], retain_graph=True)
        alone = torch.autograd.grad(
            denoising_loss(model, x0[i : i + 1], y[i : i + 1], t[i : i + 1], noise[i : i + 1], schedule, prediction, "min_snr")[0],
            params,
        )
        for p_batch, p_alone in zip(in_batch[:-1], alone, strict=True):
            assert p_alone.abs().sum() > 0
            torch.testing.assert_close(p_batch, p_alone, rtol=1e-10, atol=1e-12)
        x0_grad = in_batch[-1]
        assert (x0_grad[torch.arange(batch) != i] == 0).all() and (x0_grad[i] != 0).all()


def test_mismatched_draws_raise() -> None:
    schedule = make_schedule("cosine", 10)
    x0, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    t, noise = draw_timesteps_and_noise(4, 3, 10, draws=2)
    with pytest.raises(ValueError):
        denoising_loss(lambda x_t, t_, y_: x_t, x0, y, t[:3], noise[:3], schedule)
    with pytest.raises(ValueError):
        denoising_loss(lambda x_t, t_, y_: x_t, x0, y, t, noise[:, :1], schedule)
    with pytest.raises(ValueError):
        denoising_loss(lambda x_t, t_, y_: x_t, x0, y, t, noise[..., :2], schedule)


def test_invalid_choices_raise() -> None:
    schedule = make_schedule("cosine", 10)
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError):
        loss_weight(t, schedule, "eps", "uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loss_weight(t, schedule, "v", "none")  # type: ignore[arg-type]


@pytest.mark.parametrize("prediction, weighting", [("eps", "none"), ("x0", "snr"), ("eps", "min_snr"), ("x0", "min_snr")])
def test_the_objective_object_is_the_free_functions_bit_for_bit(prediction, weighting):
    """`DenoisingObjective` carries (schedule, prediction, weighting) and computes exactly what
    the spelled-out functions compute, from the same draws of the same generator."""
    config = DiffusionConfig(schedule="linear", num_steps=T, prediction=prediction, weighting=weighting)
    objective = DenoisingObjective.of(config)
    schedule = make_schedule("linear", T)
    assert torch.equal(objective.schedule.alphas_cumprod, schedule.alphas_cumprod)
    assert (objective.prediction, objective.weighting, objective.num_steps) == (prediction, weighting, T)
    t, noise = objective.draw(16, 5, draws=3, generator=torch.Generator().manual_seed(3), dtype=torch.float64, low=2, high=40)
    t_free, noise_free = draw_timesteps_and_noise(16, 5, T, 3, torch.Generator().manual_seed(3), dtype=torch.float64, low=2, high=40)
    assert torch.equal(t, t_free) and torch.equal(noise, noise_free)
    gen = torch.Generator().manual_seed(4)
    x0, y = torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen)
    layer = torch.nn.Linear(5, 5).double()

    def model(x_t, t_, y_):
        return layer(x_t) * (1 + t_[..., None] / T) + y_[..., None]

    with torch.no_grad():
        assert torch.equal(objective.loss(model, x0, y, t, noise), denoising_loss(model, x0, y, t, noise, schedule, prediction, weighting))
        assert torch.equal(objective.weight(t), loss_weight(t, schedule, prediction, weighting))
        both = objective.denoise(model, x0, y, t, noise)
        free = denoise(model, x0, y, t, noise, schedule, prediction, weighting)
    assert torch.equal(both.loss, free.loss) and torch.equal(both.x0_estimate, free.x0_estimate)
    with pytest.raises(ValueError, match="weighting"):
        DenoisingObjective(schedule, prediction, "uniform")  # type: ignore[arg-type]
