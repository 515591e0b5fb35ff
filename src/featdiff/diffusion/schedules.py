"""Noise schedules for discrete-time Gaussian diffusion.

Every array is float64: with T=1000 steps, 1 - ᾱ_t near t=0 is ~4e-5 (cosine) and ᾱ_t near t=T-1
is ~1e-9, and float32 loses most of the significant digits of the derived quantities (SNR,
posterior coefficients) at those ends. Values are cast to the data's dtype only when gathered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ScheduleKind = Literal["linear", "cosine"]


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al.'s schedule; the endpoints are taken as given for every T (no 1000/T rescaling),
    so a short schedule does not reach the same ᾱ_T and callers who want that must pass the
    endpoints themselves."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_alpha_bar(u: Tensor, s: float = 0.008) -> Tensor:
    """ᾱ as a function of continuous time u = t/T in [0, 1], normalised so that ᾱ(0) = 1; the
    offset s keeps β near u=0 from being vanishingly small (Nichol & Dhariwal 2021, eq. 17)."""
    f = torch.cos((u + s) / (1.0 + s) * (math.pi / 2.0)) ** 2
    return f / math.cos(s / (1.0 + s) * (math.pi / 2.0)) ** 2


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_t = 1 - ᾱ(t+1)/ᾱ(t), clipped at max_beta because ᾱ(1) = 0 would otherwise make the
    last step a pure-noise step with β = 1 and an infinite SNR ratio."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = cosine_alpha_bar(u, s)
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """All per-timestep constants of one forward process, precomputed once in float64.

    Index t = 0..T-1 denotes the noised state x_t with ᾱ_t = prod_{s<=t} (1 - β_s); t = 0 is the
    least noisy state, and its 'previous' state is the data itself (ᾱ_prev = 1).
    """

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 2:
            # The clipped log-variance borrows β̃_1, so a one-step process has nothing to borrow.
            raise ValueError(f"betas must be a 1-D tensor of >= 2 steps, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # β̃_0 = 0; the log is clipped to β̃_1 so that it stays finite (Ho et al. / improved-DDPM).
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        return cls(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - alphas_cumprod).sqrt(),
            sqrt_recip_alphas_cumprod=alphas_cumprod.rsqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / alphas_cumprod - 1.0).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=clipped.log(),
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
        )

    def gather(self, name_or_tensor: str | Tensor, t: Tensor, like: Tensor) -> Tensor:
        """Per-sample constants shaped t.shape + (1, ..., 1) so that they broadcast against `like`
        (whose leading dims are t's: (B,) against (B, D), or (B, K) against (B, K, D) for K noise
        draws per example), cast to its dtype and device only after indexing in float64."""
        values = getattr(self, name_or_tensor) if isinstance(name_or_tensor, str) else name_or_tensor
        if t.ndim < 1 or t.ndim > like.ndim or tuple(like.shape[: t.ndim]) != tuple(t.shape):
            raise ValueError(
                f"t must have shape {tuple(like.shape[:1])} or another leading part of {tuple(like.shape)}, got {tuple(t.shape)}"
            )
        picked = values.to(device=t.device)[t]
        return picked.to(dtype=like.dtype, device=like.device).reshape(*t.shape, *([1] * (like.ndim - t.ndim)))


def make_schedule(kind: ScheduleKind, num_steps: int) -> NoiseSchedule:
    if kind == "linear":
        return NoiseSchedule.from_betas(linear_betas(num_steps))
    if kind == "cosine":
        return NoiseSchedule.from_betas(cosine_betas(num_steps))
    raise ValueError(f"unknown schedule kind {kind!r}; expected 'linear' or 'cosine'")
