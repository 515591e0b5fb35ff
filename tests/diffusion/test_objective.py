"""Per-sample denoising losses: oracle models, weights at the drawn t, shapes."""

import pytest
import torch

from featdiff.diffusion.losses import (
    denoising_loss_per_sample,
    diffusion_loss_per_sample,
    loss_weight,
    model_x0_and_eps,
)
from featdiff.diffusion.process import q_sample
from featdiff.diffusion.schedules import make_schedule

T = 1000


def _replay_draws(seed: int, batch: int, dim: int, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented draw order of diffusion_loss_per_sample: t first, then ε."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, num_steps, (batch,), generator=gen)
    return t, torch.randn(batch, dim, generator=gen)


def _alpha_bar(schedule) -> torch.Tensor:
    return torch.exp(torch.cumsum(torch.log1p(-schedule.betas), 0))


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("weighting", ["none", "snr", "min_snr"])
def test_oracle_model_has_zero_loss(prediction: str, weighting: str) -> None:
    schedule = make_schedule("cosine", T)
    x0 = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(32, dtype=torch.long)
    _, noise = _replay_draws(7, 32, 6, T)
    target = noise if prediction == "eps" else x0

    def oracle(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return target

    loss = diffusion_loss_per_sample(oracle, x0, y, schedule, prediction, weighting, generator=torch.Generator().manual_seed(7))
    assert loss.shape == (32,)
    assert (loss == 0).all()


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_weights_at_the_drawn_t(prediction: str) -> None:
    """A model off by exactly 1 in every coordinate has MSE 1, so the loss is the weight itself."""
    schedule = make_schedule("cosine", T)
    batch, dim, seed, gamma = 4096, 3, 11, 5.0
    x0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(batch, dtype=torch.long)
    t, noise = _replay_draws(seed, batch, dim, T)
    target = noise if prediction == "eps" else x0

    def off_by_one(x_t: torch.Tensor, t_: torch.Tensor, y_: torch.Tensor) -> torch.Tensor:
        assert torch.equal(t_, t)
        torch.testing.assert_close(x_t, q_sample(x0, t, noise, schedule))
        return target + 1

    ac = _alpha_bar(schedule)[t]
    ratio = ac / (1 - ac)
    expected = {
        "none": torch.ones(batch, dtype=torch.float64),
        "snr": ratio,
        "min_snr": ratio.clamp(max=gamma) / (ratio if prediction == "eps" else 1.0),
    }
    for weighting, weight in expected.items():
        loss = diffusion_loss_per_sample(
            off_by_one,
            x0,
            y,
            schedule,
            prediction,
            weighting,
            min_snr_gamma=gamma,
            generator=torch.Generator().manual_seed(seed),
        )
        assert loss.shape == (batch,) and loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), weight, rtol=1e-5, atol=1e-6)


def test_snr_weighted_x0_loss_equals_unweighted_eps_loss() -> None:
    """LDMLR's objective: ‖x0 - x̂0‖² SNR(t) = ‖ε - ε̂‖² when ε̂ is derived from x̂0."""
    schedule = make_schedule("cosine", T)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(256, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(256, 4, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 900, (256,), generator=gen)
    y = torch.zeros(256, dtype=torch.long)
    perturbation = 0.1 * torch.randn(256, 4, generator=gen, dtype=torch.float64)

    def x0_model(x_t, t_, y_):
        return x0 + perturbation

    def eps_model(x_t, t_, y_):
        return model_x0_and_eps(x0_model(x_t, t_, y_), x_t, t_, "x0", schedule)[1]

    weighted = denoising_loss_per_sample(x0_model, x0, y, t, noise, schedule, "x0", "snr")
    plain = denoising_loss_per_sample(eps_model, x0, y, t, noise, schedule, "eps", "none")
    torch.testing.assert_close(weighted, plain, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_model_x0_and_eps_recovers_both_from_either(prediction: str) -> None:
    schedule = make_schedule("linear", T)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(128, 5, generator=gen, dtype=torch.float64)
    noise = torch.randn(128, 5, generator=gen, dtype=torch.float64)
    t = torch.randint(0, T, (128,), generator=gen)
    x_t = q_sample(x0, t, noise, schedule)
    output = noise if prediction == "eps" else x0
    x0_hat, eps_hat = model_x0_and_eps(output, x_t, t, prediction, schedule)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-8, atol=1e-8)


def test_per_sample_losses_are_independent() -> None:
    """Each entry depends only on its own sample, as per-sample gradient clipping requires."""
    schedule = make_schedule("cosine", T)
    x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    y = torch.zeros(8, dtype=torch.long)
    weight = torch.nn.Parameter(torch.randn(3, 3, generator=torch.Generator().manual_seed(5)))

    def model(x_t, t, y_):
        return x_t @ weight

    loss = diffusion_loss_per_sample(model, x0, y, schedule, "eps", generator=torch.Generator().manual_seed(6))
    (grad,) = torch.autograd.grad(loss[2], x0)
    assert (grad[torch.arange(8) != 2] == 0).all() and (grad[2] != 0).any()


def test_invalid_choices_raise() -> None:
    schedule = make_schedule("cosine", 10)
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError):
        loss_weight(t, schedule, "eps", "uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loss_weight(t, schedule, "v", "none")  # type: ignore[arg-type]
