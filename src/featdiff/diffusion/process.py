"""The forward process q and its closed-form inversions.

Everything is a pure function of tensors and a `NoiseSchedule`; t is an int64 tensor (B,) of
indices 0..T-1 and x has shape (B, ...). The samplers reuse the same algebra with per-step
scalars, so the identities here are the single source of truth that the tests pin down.
"""

from __future__ import annotations

from torch import Tensor

from featdiff.diffusion.schedules import NoiseSchedule


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε: the marginal q(x_t | x0), so training needs no simulation."""
    return schedule.gather("sqrt_alphas_cumprod", t, x0) * x0 + schedule.gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise


def x0_from_eps(x_t: Tensor, eps: Tensor, sqrt_recip_ac: Tensor | float, sqrt_recipm1_ac: Tensor | float) -> Tensor:
    """Inverts q_sample for x0, given 1/√ᾱ and √(1/ᾱ - 1) either gathered per sample or as one
    scalar per sampling step; this form never divides by the tiny √(1-ᾱ) near t=0."""
    return sqrt_recip_ac * x_t - sqrt_recipm1_ac * eps


def eps_from_x0(x_t: Tensor, x0: Tensor, sqrt_recip_ac: Tensor | float, sqrt_recipm1_ac: Tensor | float) -> Tensor:
    """Inverts q_sample for ε, with the same coefficients as `x0_from_eps` so the two round-trip."""
    return (sqrt_recip_ac * x_t - x0) / sqrt_recipm1_ac


def predict_x0_from_eps(x_t: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule) -> Tensor:
    return x0_from_eps(
        x_t,
        eps,
        schedule.gather("sqrt_recip_alphas_cumprod", t, x_t),
        schedule.gather("sqrt_recipm1_alphas_cumprod", t, x_t),
    )


def predict_eps_from_x0(x_t: Tensor, t: Tensor, x0: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Needed to turn an x0-predicting (or clipped) model into the ε that DDIM's direction uses."""
    return eps_from_x0(
        x_t,
        x0,
        schedule.gather("sqrt_recip_alphas_cumprod", t, x_t),
        schedule.gather("sqrt_recipm1_alphas_cumprod", t, x_t),
    )


def snr(t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """ᾱ_t / (1 - ᾱ_t) in float64, shaped like t: loss weights span ~13 orders of magnitude over a
    cosine schedule, so the caller decides when to drop precision."""
    alphas_cumprod = schedule.alphas_cumprod.to(t.device)[t]
    return alphas_cumprod / (1.0 - alphas_cumprod)
