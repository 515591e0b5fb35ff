"""The denoising objective: the one place a diffusion loss is computed.

Every trainer — LDMLR's stage 2, end-to-end training, DP-SGD and federated clients — holds one
`DenoisingObjective` (schedule, prediction, weighting: what travels together, as in DiT's
`GaussianDiffusion`), draws (t, ε) with its `draw` and evaluates `loss` / `denoise` on those
explicit draws, so the loss is a deterministic function that tests, privacy accounting and
replays can pin down. The free functions below are the same computations with every parameter
spelled out; the object calls them, so both give bit-identical numbers.

Shapes: x0 (B, D), y (B,); t (B, K) and ε (B, K, D) for K noise draws per example (t (B,) and
ε (B, D) mean K = 1). The loss comes back per example, shape (B,), averaged over its K draws:
DP-SGD clips each example's gradient after that average, so the K draws are one record's
contribution, never K records.

Weightings, all multiplying the per-draw MSE of whatever the model predicts:
- "none": the plain MSE (Ho et al.'s simple loss when predicting ε).
- "snr": SNR(t) = ᾱ/(1-ᾱ), unclamped. This is LDMLR's choice with x0 prediction, where it makes
  the x0 loss equal to the ε loss (‖x0 - x̂0‖² SNR = ‖ε - ε̂‖²); with ε prediction it is SNR²
  in x0 terms and is kept only because it is what the name says.
- "min_snr": Min-SNR-γ (Hang et al. 2023), defined in x0 terms as min(SNR, γ); for ε
  prediction that becomes min(SNR, γ)/SNR so that both parameterisations optimise the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from featdiff.config import DiffusionConfig
from featdiff.diffusion.parameterization import Denoiser, Prediction, check_prediction, denoising_target, model_x0_and_eps
from featdiff.diffusion.process import q_sample, snr
from featdiff.diffusion.schedules import NoiseSchedule, make_schedule

Weighting = Literal["none", "snr", "min_snr"]


def draw_timesteps_and_noise(
    batch: int,
    feature_dim: int,
    num_steps: int,
    draws: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    low: int = 0,
    high: int | None = None,
) -> tuple[Tensor, Tensor]:
    """t ~ U{low..high-1} of shape (B, K), then ε ~ N(0, I) of shape (B, K, D), in that order from
    one generator (callers that replay a draw rely on the order). [low, high) restricts the
    timesteps, as dp-promise's two phases do; the default is every timestep."""
    high = num_steps if high is None else high
    if not 0 <= low < high <= num_steps:
        raise ValueError(f"need 0 <= low < high <= {num_steps}, got [{low}, {high})")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    t = torch.randint(low, high, (batch, draws), generator=generator, device=device)
    noise = torch.randn((batch, draws, feature_dim), generator=generator, dtype=dtype, device=device)
    return t, noise


def loss_weight(
    t: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction,
    weighting: Weighting,
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """Per-draw weight, shaped like t, in float64; see the module docstring for each choice."""
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


@dataclass(frozen=True)
class Denoised:
    """One evaluation of the objective: the per-example loss (B,) and the model's x̂0 for every
    draw (B, K, D), which the semantic losses of end-to-end training use."""

    loss: Tensor
    x0_estimate: Tensor


def denoise(
    model: Denoiser,
    x0: Tensor,
    y: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction = "eps",
    weighting: Weighting = "none",
    min_snr_gamma: float = 5.0,
) -> Denoised:
    """The objective at given draws (see the module docstring for shapes)."""
    if t.ndim == 1:
        t, noise = t[:, None], noise[:, None]
    if t.shape[0] != x0.shape[0] or noise.shape != (*t.shape, *x0.shape[1:]):
        raise ValueError(f"draws must be t (B, K), noise (B, K, D) for x0 {tuple(x0.shape)}; got {tuple(t.shape)}, {tuple(noise.shape)}")
    clean = x0[:, None].expand_as(noise)
    x_t = q_sample(clean, t, noise, schedule)
    output = model(x_t, t, y[:, None].expand(t.shape))
    squared_error = (output - denoising_target(clean, noise, prediction)).square().flatten(2).mean(2)
    weight = loss_weight(t, schedule, prediction, weighting, min_snr_gamma).to(squared_error.dtype)
    x0_estimate, _ = model_x0_and_eps(output, x_t, t, prediction, schedule)
    return Denoised(loss=(squared_error * weight).mean(1), x0_estimate=x0_estimate)


def denoising_loss(
    model: Denoiser,
    x0: Tensor,
    y: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction = "eps",
    weighting: Weighting = "none",
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """Per-example loss (B,) at given draws."""
    return denoise(model, x0, y, t, noise, schedule, prediction, weighting, min_snr_gamma).loss


@dataclass(frozen=True, eq=False)
class DenoisingObjective:
    """The diffusion objective of one model: its forward process (`schedule`), what the model
    predicts and how each draw's error is weighted. Built once per run (`of`) and handed to every
    trainer, scorer and per-example-gradient path, so those can never disagree on it."""

    schedule: NoiseSchedule
    prediction: Prediction = "eps"
    weighting: Weighting = "none"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        check_prediction(self.prediction)
        if self.weighting not in get_args(Weighting):
            raise ValueError(f"unknown weighting {self.weighting!r}; expected one of {get_args(Weighting)}")

    @classmethod
    def of(cls, config: DiffusionConfig) -> DenoisingObjective:
        """The objective a diffusion config trains (its presets resolved)."""
        return cls(make_schedule(config.schedule, config.num_steps), config.resolved_prediction(), config.resolved_weighting())

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def draw(
        self,
        batch: int,
        feature_dim: int,
        *,
        draws: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        low: int = 0,
        high: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(t, ε) for `batch` examples, K = `draws` each, t in [low, high) (see
        `draw_timesteps_and_noise`: t first, then ε, from `generator`)."""
        return draw_timesteps_and_noise(batch, feature_dim, self.num_steps, draws, generator, device, dtype, low, high)

    def weight(self, t: Tensor) -> Tensor:
        """Per-draw weight, shaped like t, in float64."""
        return loss_weight(t, self.schedule, self.prediction, self.weighting, self.min_snr_gamma)

    def denoise(self, model: Denoiser, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor) -> Denoised:
        """The per-example loss and the model's x̂0 at the given draws."""
        return denoise(model, x0, y, t, noise, self.schedule, self.prediction, self.weighting, self.min_snr_gamma)

    def loss(self, model: Denoiser, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The per-example loss (B,) at the given draws."""
        return self.denoise(model, x0, y, t, noise).loss
