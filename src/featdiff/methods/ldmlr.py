"""LDMLR's generative stages: fit a class-conditional denoiser on features, sample pseudo-features.

The denoiser sees features through a scaler: featdiff standardises each dimension with the
training features' statistics; the faithful preset maps them as if they lay in [0, 1] and clips
samples there, as LDMLR's code does (which truncates the unbounded ReLU features).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class FeatureGenerator:
    """A trained denoiser with the scaling and clipping it was trained for."""

    denoiser: nn.Module
    scaler: Scaler
    clip: tuple[torch.Tensor | float, torch.Tensor | float] | None

    def tensors(self) -> dict[str, torch.Tensor]:
        state = {f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()}
        state |= {f"scaler.{k}": v for k, v in self.scaler.state_dict().items()}
        if self.clip is not None:
            state |= {f"clip.{name}": torch.as_tensor(bound) for name, bound in zip(("low", "high"), self.clip, strict=True)}
        return state


def clip_range(scaled: torch.Tensor, config: DiffusionConfig) -> tuple[torch.Tensor | float, torch.Tensor | float] | None:
    if config.resolved_scaling() == "unit_interval":
        return (-1.0, 1.0)
    if not config.clip_x0:
        return None
    return scaled.min(dim=0).values, scaled.max(dim=0).values


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
) -> FeatureGenerator:
    """Train the denoiser on scaled features; samples come from its EMA weights."""
    scaler = make_scaler(features, config)
    scaled = scaler.encode(features)
    model = build_denoiser(features.shape[1], num_classes, config).to(device)
    ema = train_denoiser(model, scaled, labels, schedule_for(config), config, generator, resume=resume, checkpoint=checkpoint, log=log)
    bounds = clip_range(scaled, config)
    if bounds is not None:
        bounds = tuple(b.to(device) if isinstance(b, torch.Tensor) else b for b in bounds)
    return FeatureGenerator(ema.module.eval(), scaler, bounds)


def generate(
    generator_model: FeatureGenerator,
    counts: torch.Tensor,
    config: DiffusionConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample counts[c] pseudo-features of every class c; returns (features, labels) on the CPU."""
    denoiser = generator_model.denoiser
    device = next(denoiser.parameters()).device
    labels = torch.repeat_interleave(torch.arange(counts.numel()), counts).to(device)
    scaled = sample_features(
        denoiser,
        labels,
        denoiser.feature_dim,
        schedule_for(config),
        method=config.resolved_sampler(),
        steps=config.resolved_sample_steps(),
        eta=config.eta,
        prediction=config.resolved_prediction(),
        clip=generator_model.clip,
        generator=generator,
    )
    return generator_model.scaler.decode(scaled).cpu(), labels.cpu()
