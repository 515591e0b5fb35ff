"""The three training strategies as schedules: what runs at a given point of training.

A schedule is a pure function of the training progress (epochs as a float) and the config, so
the same trainer loop serves all three and a test can read a strategy off without training.

- A, synchronous: every step trains E, G and ε_θ on L_real + λ·L_LDM^sem; every k-th step adds
  L_ge on a fresh few-step DDIM sample. The semantic weights warm up linearly, so z̃₀ are not
  pulled onto prototypes while those are still estimates of a moving encoder.
- B, alternating: denoiser steps (E, G frozen) and encoder/classifier steps (ε_θ frozen), in a
  configurable ratio.
- C, progressive: L_real only, then + L_LDM^sem, then + L_ge with the pseudo share of the
  classifier's batches rising linearly from `pseudo_share_start` to `pseudo_share`.
"""

from __future__ import annotations

from featdiff.config import EndToEndConfig
from featdiff.methods.e2e.steps import TermWeights


def _semantic(config: EndToEndConfig, scale: float) -> dict[str, float]:
    return {
        "proto": scale * config.eta_proto,
        "cov": scale * config.eta_cov if config.semantic == "cov" else 0.0,
        "rad": scale * config.eta_rad if config.semantic == "rad" else 0.0,
    }


def term_weights(config: EndToEndConfig, epoch: float, total_epochs: float) -> TermWeights:
    """The weights in force at `epoch` (fractional) of `total_epochs` (γ_ge resolved: null is 1 here;
    the trainer's caller resolves it from the class counts first)."""
    gamma = 1.0 if config.gamma_ge is None else config.gamma_ge
    if config.strategy == "A":
        warmup = config.semantic_warmup_epochs
        scale = 1.0 if warmup <= 0 else min(1.0, epoch / warmup)
        return TermWeights(sem=config.lambda_sem, ge=gamma, pseudo_share=config.pseudo_share, **_semantic(config, scale))
    if config.strategy == "B":
        return TermWeights(sem=config.lambda_sem, ge=gamma, pseudo_share=config.pseudo_share, **_semantic(config, 1.0))
    real_only_until = config.warmup_real_epochs
    generation_from = real_only_until + config.ldm_only_epochs
    if epoch < real_only_until:
        return TermWeights(sem=0.0)
    if epoch < generation_from:
        return TermWeights(sem=config.lambda_sem, **_semantic(config, 1.0))
    span = max(total_epochs - generation_from, 1e-12)
    fraction = min(1.0, (epoch - generation_from) / span)
    share = config.pseudo_share_start + fraction * (config.pseudo_share - config.pseudo_share_start)
    return TermWeights(sem=config.lambda_sem, ge=gamma, pseudo_share=share, **_semantic(config, 1.0))


def generates_at(config: EndToEndConfig, step: int) -> bool:
    """Strategy A runs the generation branch on every `ge_every`-th step; C on every step."""
    return config.strategy != "A" or step % config.ge_every == 0


def denoiser_steps_per_batch(config: EndToEndConfig) -> int:
    """Strategy B: each batch gets one encoder/classifier step and this many denoiser steps
    (1 for 1:1, 2 for 2:1); the encoder sees every batch once per epoch, as in ce_finetune."""
    return config.ratio_denoiser_steps
