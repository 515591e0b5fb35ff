"""Denoising losses, per sample.

The loss is returned unreduced, shape (B,), because DP-SGD clips per-sample gradients and
federated clients weight samples themselves; both wrap these functions rather than re-deriving
the target and weight.

Weightings, all multiplying the per-sample MSE of whatever the model predicts:
- "none": the plain MSE (Ho et al.'s simple loss when predicting ε).
- "snr": SNR(t) = ᾱ/(1-ᾱ), unclamped. This is LDMLR's choice with x0 prediction, where it makes
  the x0 loss equal to the ε loss (‖x0 - x̂0‖² SNR = ‖ε - ε̂‖²); with ε prediction it is SNR²
  in x0 terms and is kept only because it is what the name says.
- "min_snr": Min-SNR-γ (Hang et al. 2023), defined in x0 terms as min(SNR, γ); for ε
  prediction that becomes min(SNR, γ)/SNR so that both parameterisations optimise the same thing.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from featdiff.diffusion.process import (
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_sample,
    snr,
)
from featdiff.diffusion.sampling import Denoiser
from featdiff.diffusion.schedules import NoiseSchedule

Prediction = Literal["eps", "x0"]
Weighting = Literal["none", "snr", "min_snr"]


def check_prediction(prediction: str) -> None:
    if prediction not in get_args(Prediction):
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {get_args(Prediction)}")


def denoising_target(x0: Tensor, noise: Tensor, prediction: Prediction) -> Tensor:
    check_prediction(prediction)
    return noise if prediction == "eps" else x0


def loss_weight(
    t: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction,
    weighting: Weighting,
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """Per-sample weight (B,) in float64; see the module docstring for what each choice means."""
    check_prediction(prediction)
    if weighting == "none":
        return torch.ones(t.shape, dtype=torch.float64, device=t.device)
    ratio = snr(t, schedule)
    if weighting == "snr":
        return ratio
    if weighting == "min_snr":
        clamped = ratio.clamp(max=min_snr_gamma)
        return clamped if prediction == "x0" else clamped / ratio
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {get_args(Weighting)}")


def model_x0_and_eps(
    model_output: Tensor, x_t: Tensor, t: Tensor, prediction: Prediction, schedule: NoiseSchedule
) -> tuple[Tensor, Tensor]:
    """Both views of one prediction, because samplers need x0 (for clipping and the posterior)
    and ε (for DDIM's direction) whichever the network was trained to output."""
    check_prediction(prediction)
    if prediction == "eps":
        return predict_x0_from_eps(x_t, t, model_output, schedule), model_output
    return model_output, predict_eps_from_x0(x_t, t, model_output, schedule)


def denoising_loss_per_sample(
    model: Denoiser,
    x0: Tensor,
    y: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction,
    weighting: Weighting = "none",
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """The loss at given (t, ε): deterministic, so tests and privacy accounting can fix the draw."""
    weight = loss_weight(t, schedule, prediction, weighting, min_snr_gamma)
    output = model(q_sample(x0, t, noise, schedule), t, y)
    squared_error = (output - denoising_target(x0, noise, prediction)).square().flatten(1).mean(1)
    return squared_error * weight.to(squared_error.dtype)


def diffusion_loss_per_sample(
    model: Denoiser,
    x0: Tensor,
    y: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction,
    weighting: Weighting = "none",
    min_snr_gamma: float = 5.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo estimate of the training objective with t ~ U{0..T-1}, ε ~ N(0, I).

    t is drawn before ε from the same generator; callers that replay a draw rely on that order.
    """
    t = torch.randint(0, schedule.num_steps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return denoising_loss_per_sample(model, x0, y, t, noise, schedule, prediction, weighting, min_snr_gamma)
