"""Ancestral DDPM and DDIM sampling, plus chunked generation of many features.

All samples of a batch share the current timestep, so each step's coefficients are computed
once, in float64, as Python scalars (`AncestralStep`, `DDIMStep`) and the per-step work is a
handful of whole-batch tensor ops around one model call.

Random draws happen in one fixed order in both samplers: x_T first (unless `noise` is given),
then one (B, D) normal draw for every step whose noise scale σ is non-zero, which is every step
but the last for DDPM and for DDIM with η > 0, and none for DDIM with η = 0. With η = 1 and all
T steps DDIM's update is algebraically DDPM's, so the two then produce the same samples from the
same generator state; the tests rely on this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from featdiff.diffusion.parameterization import Denoiser, Prediction
from featdiff.diffusion.process import eps_from_x0, x0_from_eps
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.progress import progress as progress_bar

if TYPE_CHECKING:
    from featdiff.config import DiffusionConfig

Clip = tuple[float | Tensor, float | Tensor] | float | None
"""Where x̂0 is confined at every step: a (low, high) box, per dimension or scalar; a bare float
is the radius of an L2 ball (a public norm bound, for private training); None leaves x̂0 free."""
Method = Literal["ddpm", "ddim"]


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample, apart from what the denoiser was trained with: the sampler, its number of
    steps (DDIM; DDPM always takes all T), DDIM's η, the classifier-free guidance scale w (the
    model output is ε̂_∅ + w·(ε̂_y − ε̂_∅): 1 is the conditional model, w < 1 mixes in the
    unconditional one, w > 1 sharpens) and how much wider than the training range x̂0 may go
    (`clip_widen`, the box scaled about its centre). One object, so the choice travels from the
    config to every sampling call together."""

    method: Method = "ddim"
    steps: int = 50
    eta: float = 1.0
    guidance: float = 1.0
    clip_widen: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {self.method!r}; expected 'ddpm' or 'ddim'")
        if self.guidance < 0 or self.clip_widen <= 0:
            raise ValueError(f"guidance must be >= 0 and clip_widen > 0, got {self.guidance}, {self.clip_widen}")

    @classmethod
    def of(cls, config: DiffusionConfig) -> SamplerSettings:
        """The sampler a run's diffusion config resolves to."""
        return cls(config.resolved_sampler(), config.resolved_sample_steps(), config.eta, config.guidance, config.clip_widen)


def widened(clip: Clip, factor: float) -> Clip:
    """A box clip scaled about its centre by `factor` (a ball's radius likewise); None stays None."""
    if clip is None or factor == 1.0:
        return clip
    if isinstance(clip, float):
        return clip * factor
    low, high = clip
    centre, half = (high + low) / 2, (high - low) / 2
    return centre - factor * half, centre + factor * half


@dataclass(frozen=True)
class AncestralStep:
    """Scalars for x_t -> x_{t-1} ~ q(x_{t-1} | x_t, x̂0) (Ho et al. 2020, eq. 6-7)."""

    t: int
    sqrt_recip_ac: float
    sqrt_recipm1_ac: float
    coef_x0: float
    coef_xt: float
    sigma: float


@dataclass(frozen=True)
class DDIMStep:
    """Scalars for x_t -> x_prev along DDIM's generalised process (Song et al. 2021, eq. 12)."""

    t: int
    sqrt_recip_ac: float
    sqrt_recipm1_ac: float
    sqrt_ac_prev: float
    coef_eps: float
    sigma: float


def ancestral_plan(schedule: NoiseSchedule) -> list[AncestralStep]:
    """One step per t = T-1..0 with σ_t² = β̃_t; β̃_0 = 0, so the last step adds no noise."""
    s = schedule
    return [
        AncestralStep(
            t=t,
            sqrt_recip_ac=float(s.sqrt_recip_alphas_cumprod[t]),
            sqrt_recipm1_ac=float(s.sqrt_recipm1_alphas_cumprod[t]),
            coef_x0=float(s.posterior_mean_coef1[t]),
            coef_xt=float(s.posterior_mean_coef2[t]),
            sigma=float(s.posterior_variance[t].sqrt()),
        )
        for t in range(s.num_steps - 1, -1, -1)
    ]


def ddim_timesteps(num_steps: int, steps: int) -> Tensor:
    """`steps` distinct, evenly spaced indices from T-1 down to 0 (just T-1 when steps = 1), so
    the first step starts from (nearly) pure noise and the last lands on the data (ᾱ_prev = 1)."""
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in [1, {num_steps}], got {steps}")
    return torch.linspace(num_steps - 1, 0, steps, dtype=torch.float64).round().long()


def ddim_plan(schedule: NoiseSchedule, steps: int, eta: float) -> list[DDIMStep]:
    """σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev): η = 0 is the deterministic ODE-like sampler,
    η = 1 makes σ² the posterior variance of the skipped-step process."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    timesteps = ddim_timesteps(schedule.num_steps, steps)
    ac = schedule.alphas_cumprod[timesteps]
    ac_prev = torch.cat([ac[1:], ac.new_ones(1)])
    sigma = eta * ((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev)).sqrt()
    coef_eps = (1 - ac_prev - sigma**2).clamp(min=0).sqrt()
    return [
        DDIMStep(
            t=int(timesteps[i]),
            sqrt_recip_ac=float(ac[i].rsqrt()),
            sqrt_recipm1_ac=float((1 / ac[i] - 1).sqrt()),
            sqrt_ac_prev=float(ac_prev[i].sqrt()),
            coef_eps=float(coef_eps[i]),
            sigma=float(sigma[i]),
        )
        for i in range(steps)
    ]


def x0_and_eps_at_step(
    model_output: Tensor,
    x_t: Tensor,
    prediction: Prediction,
    sqrt_recip_ac: float,
    sqrt_recipm1_ac: float,
    clip: Clip,
) -> tuple[Tensor, Tensor]:
    """Clipping acts on x̂0, and ε̂ is then re-derived from the clipped x̂0 so that DDIM's
    direction stays consistent with the point it is heading to (as in Nichol & Dhariwal's code)."""
    if prediction == "eps":
        x0 = x0_from_eps(x_t, model_output, sqrt_recip_ac, sqrt_recipm1_ac)
        if clip is None:
            return x0, model_output
    elif prediction == "x0":
        x0 = model_output
    else:
        raise ValueError(f"unknown prediction {prediction!r}; expected 'eps' or 'x0'")
    if isinstance(clip, float):
        x0 = x0 * (clip / x0.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    elif clip is not None:
        x0 = x0.clamp(*clip)
    return x0, eps_from_x0(x_t, x0, sqrt_recip_ac, sqrt_recipm1_ac)


def ancestral_update(x_t: Tensor, x0: Tensor, noise: Tensor | None, step: AncestralStep) -> Tensor:
    mean = step.coef_x0 * x0 + step.coef_xt * x_t
    return mean if noise is None else mean + step.sigma * noise


def ddim_update(x0: Tensor, eps: Tensor, noise: Tensor | None, step: DDIMStep) -> Tensor:
    direction = step.sqrt_ac_prev * x0 + step.coef_eps * eps
    return direction if noise is None else direction + step.sigma * noise


@contextlib.contextmanager
def eval_mode(model: Denoiser) -> Iterator[None]:
    """Sampling must never see dropout; the caller's train/eval state is restored afterwards."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _initial_noise(
    y: Tensor, feature_dim: int, generator: torch.Generator | None, noise: Tensor | None, temperature: Tensor | None
) -> Tensor:
    if noise is not None:
        if noise.shape != (y.shape[0], feature_dim):
            expected = (y.shape[0], feature_dim)
            raise ValueError(f"noise must have shape {expected}, got {tuple(noise.shape)}")
        return noise
    drawn = torch.randn((y.shape[0], feature_dim), generator=generator, device=y.device)
    return drawn if temperature is None else drawn * temperature


def _step_noise(x: Tensor, sigma: float, generator: torch.Generator | None, temperature: Tensor | None) -> Tensor | None:
    if sigma == 0:
        return None
    drawn = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return drawn if temperature is None else drawn * temperature


def _model_output(model: Denoiser, x: Tensor, t: int, y: Tensor) -> Tensor:
    """The model at one timestep shared by the whole batch, through its fast path if it has one
    (`FeatureDenoiser.forward_shared_timestep`)."""
    shared = getattr(model, "forward_shared_timestep", None)
    if shared is not None:
        return shared(x, t, y)
    return model(x, torch.full_like(y, t), y)


def _predict(model: Denoiser, x: Tensor, t: int, y: Tensor, guidance: float) -> Tensor:
    """The model output, or its classifier-free guided version ε̂_∅ + w·(ε̂_y − ε̂_∅), the null
    class's in one batched call with the conditional one."""
    if guidance == 1.0:
        return _model_output(model, x, t, y)
    null = torch.full_like(y, model.null_class)
    conditional, unconditional = _model_output(model, torch.cat([x, x]), t, torch.cat([y, null])).chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def _run(
    model: Denoiser,
    y: Tensor,
    x: Tensor,
    plan: Sequence[AncestralStep] | Sequence[DDIMStep],
    prediction: Prediction,
    clip: Clip,
    generator: torch.Generator | None,
    differentiable: bool,
    guidance: float = 1.0,
    temperature: Tensor | None = None,
) -> Tensor:
    grad_context = contextlib.nullcontext() if differentiable else torch.inference_mode()
    with eval_mode(model), grad_context:
        for step in plan:
            output = _predict(model, x, step.t, y, guidance)
            x0, eps = x0_and_eps_at_step(output, x, prediction, step.sqrt_recip_ac, step.sqrt_recipm1_ac, clip)
            noise = _step_noise(x, step.sigma, generator, temperature)
            if isinstance(step, AncestralStep):
                x = ancestral_update(x, x0, noise, step)
            else:
                x = ddim_update(x0, eps, noise, step)
    # Inference tensors cannot be saved for backward, so a classifier later trained on these
    # samples would fail; an ordinary copy (B x D, negligible next to sampling) avoids that.
    return x if differentiable else x.clone()


def ddpm_sample(
    model: Denoiser,
    y: Tensor,
    feature_dim: int,
    schedule: NoiseSchedule,
    prediction: Prediction,
    clip: Clip = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    differentiable: bool = False,
    guidance: float = 1.0,
    temperature: Tensor | None = None,
) -> Tensor:
    """Ancestral sampling over all T steps (LDMLR's sampler, with clip=(-1, 1)). `temperature`
    (B, 1) scales every noise draw of each sample (x_T's and each step's)."""
    x = _initial_noise(y, feature_dim, generator, noise, temperature)
    return _run(model, y, x, ancestral_plan(schedule), prediction, clip, generator, differentiable, guidance, temperature)


def ddim_sample(
    model: Denoiser,
    y: Tensor,
    feature_dim: int,
    schedule: NoiseSchedule,
    steps: int,
    eta: float = 0.0,
    prediction: Prediction = "eps",
    clip: Clip = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    differentiable: bool = False,
    guidance: float = 1.0,
    temperature: Tensor | None = None,
) -> Tensor:
    """DDIM with any number of steps and any η; `differentiable=True` keeps the autograd graph
    through every step (for training through the sampler), otherwise it runs in inference mode.
    `temperature` (B, 1) scales every noise draw of each sample."""
    x = _initial_noise(y, feature_dim, generator, noise, temperature)
    plan = ddim_plan(schedule, steps, eta)
    return _run(model, y, x, plan, prediction, clip, generator, differentiable, guidance, temperature)


def sample_features(
    model: Denoiser,
    labels: Tensor,
    *,
    feature_dim: int,
    schedule: NoiseSchedule,
    sampler: SamplerSettings,
    prediction: Prediction = "eps",
    clip: Clip = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
    progress: bool = True,
    differentiable: bool = False,
    temperature: Tensor | None = None,
) -> Tensor:
    """Generates one feature per label, in chunks so that activations stay bounded for any N.

    Draws are consumed chunk after chunk from the one generator, so for a fixed seed the samples
    depend on chunk_size (their distribution does not). `differentiable` keeps the graph through
    every step (training through the sampler). `temperature` (one per label) scales each sample's
    noise draws; `sampler.guidance` and `sampler.clip_widen` apply as `SamplerSettings` says.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    clip = widened(clip, sampler.clip_widen)
    temperatures = [None] * -(-labels.shape[0] // chunk_size) if temperature is None else temperature.to(labels.device).split(chunk_size)
    chunks = []
    bar = progress_bar(total=labels.shape[0], unit="feat", desc=f"sampling ({sampler.method})", disable=not progress)
    with bar:
        for y, temperature_chunk in zip(labels.split(chunk_size), temperatures, strict=True):
            scale = None if temperature_chunk is None else temperature_chunk.to(torch.float32)[:, None]
            common = {
                "prediction": prediction,
                "clip": clip,
                "generator": generator,
                "differentiable": differentiable,
                "guidance": sampler.guidance,
                "temperature": scale,
            }
            if sampler.method == "ddpm":
                sample = ddpm_sample(model, y, feature_dim, schedule, **common)
            else:
                sample = ddim_sample(model, y, feature_dim, schedule, steps=sampler.steps, eta=sampler.eta, **common)
            chunks.append(sample)
            bar.update(y.shape[0])
    return torch.cat(chunks) if chunks else torch.empty((0, feature_dim), device=labels.device)
