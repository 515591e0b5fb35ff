"""LDMLR's generative stages: fit a class-conditional denoiser on features, sample pseudo-features.

The denoiser sees features through a scaler: featdiff standardises each dimension with the
training features' statistics; the faithful preset maps them as if they lay in [0, 1] and clips
samples there, as LDMLR's code does (which truncates the unbounded ReLU features).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from featdiff.config import DiffusionConfig, GenerationConfig
from featdiff.diffusion.sampling import sample_features
from featdiff.diffusion.scaling import Standardizer, UnitIntervalMap
from featdiff.diffusion.schedules import NoiseSchedule, make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.training.denoiser import train_denoiser

Scaler = Standardizer | UnitIntervalMap


def ldmlr_counts(train_counts: torch.Tensor, ratio: float, floor: int) -> torch.Tensor:
    """max(round(ratio·n_c), floor), with Python's round (halves to even) as LDMLR uses it."""
    return torch.tensor([max(round(ratio * int(n)), floor) for n in train_counts], dtype=torch.int64)


def balanced_counts(train_counts: torch.Tensor) -> torch.Tensor:
    """Fill every class up to the head class's count."""
    return train_counts.max() - train_counts


def pseudo_counts(train_counts: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    if config.count_rule == "balanced":
        return balanced_counts(train_counts)
    return ldmlr_counts(train_counts, config.ratio, config.floor)


def make_scaler(features: torch.Tensor, config: DiffusionConfig) -> Scaler:
    if config.resolved_scaling() == "unit_interval":
        return UnitIntervalMap()
    return Standardizer.fit(features)


def schedule_for(config: DiffusionConfig) -> NoiseSchedule:
    return make_schedule(config.schedule, config.num_steps)


def build_denoiser(feature_dim: int, num_classes: int, config: DiffusionConfig) -> FeatureDenoiser:
    return FeatureDenoiser(
        feature_dim, num_classes, width=config.width, depth=config.depth, time_dim=config.time_dim, dropout=config.dropout
    )


def fit_denoiser(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: DiffusionConfig,
    generator: torch.Generator,
    device: torch.device,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    log: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, Scaler]:
    """Train the denoiser on scaled features; returns the EMA denoiser and the scaler."""
    scaler = make_scaler(features, config)
    model = build_denoiser(features.shape[1], num_classes, config).to(device)
    ema = train_denoiser(
        model, scaler.encode(features), labels, schedule_for(config), config, generator,
        resume=resume, checkpoint=checkpoint, log=log,
    )
    return ema.module.eval(), scaler


def generate(
    denoiser: nn.Module,
    scaler: Scaler,
    counts: torch.Tensor,
    config: DiffusionConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample counts[c] pseudo-features of every class c; returns (features, labels) on the CPU."""
    device = next(denoiser.parameters()).device
    labels = torch.repeat_interleave(torch.arange(counts.numel()), counts).to(device)
    faithful_clip = (-1.0, 1.0) if config.resolved_scaling() == "unit_interval" else None
    scaled = sample_features(
        denoiser,
        labels,
        schedule_for(config),
        sampler=config.resolved_sampler(),
        steps=config.resolved_sample_steps(),
        eta=config.eta,
        prediction=config.resolved_prediction(),
        clip=faithful_clip,
        generator=generator,
    )
    return scaler.decode(scaled).cpu(), labels.cpu()
