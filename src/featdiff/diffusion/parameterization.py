"""What the network predicts, and how its output turns into both x̂0 and ε̂.

A denoiser is trained to predict either the noise ε or the clean sample x0; samplers need both
views (x̂0 for clipping and the posterior, ε̂ for DDIM's direction), and so do the semantic losses
of end-to-end training (x̂0). Both conversions invert the forward process exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import Tensor

from featdiff.diffusion.process import predict_eps_from_x0, predict_x0_from_eps
from featdiff.diffusion.schedules import NoiseSchedule

Prediction = Literal["eps", "x0"]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(x_t (..., D), t (...) int64, y (...) int64) -> the model's ε or x0 prediction (..., D)."""


def check_prediction(prediction: str) -> None:
    if prediction not in get_args(Prediction):
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {get_args(Prediction)}")


def denoising_target(x0: Tensor, noise: Tensor, prediction: Prediction) -> Tensor:
    check_prediction(prediction)
    return noise if prediction == "eps" else x0


def model_x0_and_eps(
    model_output: Tensor, x_t: Tensor, t: Tensor, prediction: Prediction, schedule: NoiseSchedule
) -> tuple[Tensor, Tensor]:
    """Both views of one prediction at per-sample timesteps t."""
    check_prediction(prediction)
    if prediction == "eps":
        return predict_x0_from_eps(x_t, t, model_output, schedule), model_output
    return model_output, predict_eps_from_x0(x_t, t, model_output, schedule)
