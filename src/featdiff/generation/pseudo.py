"""The one pseudo-feature generator: a trained denoiser with the scaling and x̂0 clip range it
was trained for, sampled for given labels or per-class counts.

LDMLR's stage 3, the stale and refit controls, end-to-end training (few-step, optionally
differentiable) and its diagnostics all sample through `FeatureGenerator.sample`, so a change to
scaling, clipping or sampling reaches every method at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from featdiff.config import DiffusionConfig, GenerationConfig
from featdiff.diffusion.parameterization import Prediction
from featdiff.diffusion.sampling import Clip, SamplerSettings, sample_features
from featdiff.diffusion.scaling import Scaler, Standardizer, UnitIntervalMap
from featdiff.diffusion.schedules import NoiseSchedule, make_schedule
from featdiff.distributed import gather_objects, world
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.seeding import initialise, named_generator
from featdiff.training.state import TrainState


def ldmlr_counts(train_counts: Tensor, ratio: float, floor: int) -> Tensor:
    """max(round(ratio·n_c), floor), with Python's round (halves to even) as LDMLR uses it."""
    return torch.tensor([max(round(ratio * int(n)), floor) for n in train_counts], dtype=torch.int64)


def balanced_counts(train_counts: Tensor) -> Tensor:
    """Fill every class up to the head class's count."""
    return train_counts.max() - train_counts


def uniform_counts(train_counts: Tensor, per_class: int | None) -> Tensor:
    """`per_class` of every class (the head class's training count when None)."""
    count = int(train_counts.max()) if per_class is None else per_class
    return torch.full_like(train_counts, count, dtype=torch.int64)


def pseudo_counts(train_counts: Tensor, config: GenerationConfig) -> Tensor:
    if config.count_rule == "balanced":
        return balanced_counts(train_counts)
    if config.count_rule == "uniform":
        return uniform_counts(train_counts, config.per_class)
    return ldmlr_counts(train_counts, config.ratio, config.floor)


def labels_for(counts: Tensor) -> Tensor:
    """counts[c] copies of every class c, in class order."""
    return torch.repeat_interleave(torch.arange(counts.numel()), counts.cpu())


def schedule_for(config: DiffusionConfig) -> NoiseSchedule:
    return make_schedule(config.schedule, config.num_steps)


def build_denoiser(feature_dim: int, num_classes: int, config: DiffusionConfig) -> FeatureDenoiser:
    return FeatureDenoiser(
        feature_dim, num_classes, width=config.width, depth=config.depth, time_dim=config.time_dim, dropout=config.dropout
    )


def make_scaler(features: Tensor, config: DiffusionConfig) -> Scaler:
    if config.resolved_scaling() == "unit_interval":
        return UnitIntervalMap()
    return Standardizer.fitted(features)


def clip_range(scaled: Tensor, config: DiffusionConfig) -> Clip:
    """Where x̂0 is clamped while sampling: LDMLR's [-1, 1] under its unit-interval map, else each
    dimension's range of the (scaled) training features, or nowhere."""
    if config.resolved_scaling() == "unit_interval":
        return (-1.0, 1.0)
    if not config.clip_x0:
        return None
    return scaled.min(dim=0).values, scaled.max(dim=0).values


@dataclass
class FeatureGenerator:
    """A denoiser with the scaling and clipping it was trained for."""

    denoiser: nn.Module
    scaler: Scaler
    clip: Clip
    schedule: NoiseSchedule
    prediction: Prediction = "eps"

    def sample(
        self,
        labels: Tensor,
        sampler: SamplerSettings,
        generator: torch.Generator | None = None,
        differentiable: bool = False,
        progress: bool = False,
        temperature: Tensor | None = None,
    ) -> Tensor:
        """One pseudo-feature per label, in the encoder's feature space, on the denoiser's device;
        `temperature` (one per label) scales each sample's noise draws."""
        device = next(self.denoiser.parameters()).device
        scaled = sample_features(
            self.denoiser,
            labels.to(device),
            feature_dim=self.denoiser.feature_dim,
            schedule=self.schedule,
            sampler=sampler,
            prediction=self.prediction,
            clip=self.clip,
            generator=generator,
            differentiable=differentiable,
            progress=progress,
            temperature=temperature,
        )
        return self.scaler.decode(scaled)

    def generate(
        self, counts: Tensor, sampler: SamplerSettings, generator: torch.Generator, *, temperatures: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """counts[c] pseudo-features of every class c, class c's noise scaled by temperatures[c];
        (features, labels) on the CPU."""
        here = world()
        if here.parallel:  # torchrun: every rank samples its share of the classes from its own stream
            mine = torch.zeros_like(counts)
            mine[here.rank :: here.size] = counts[here.rank :: here.size]
            stream = named_generator(generator.initial_seed(), f"rank {here.rank}", generator.device)
            labels = labels_for(mine)
            temperature = None if temperatures is None else temperatures[labels]
            part = self.sample(labels, sampler, stream, progress=here.main, temperature=temperature).cpu()
            gathered = gather_objects((part, labels))
            features = torch.cat([f for f, _ in gathered])
            everyone = torch.cat([y for _, y in gathered])
            order = torch.argsort(everyone, stable=True)  # class order, as one process gives it
            return features[order], everyone[order]
        labels = labels_for(counts)
        temperature = None if temperatures is None else temperatures[labels]
        return self.sample(labels, sampler, generator, progress=True, temperature=temperature).cpu(), labels

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, Tensor], config: DiffusionConfig, feature_dim: int, num_classes: int, device: torch.device
    ) -> FeatureGenerator:
        """The generator `tensors()` stored, for a denoiser built by `config` (its training keys)."""
        denoiser = build_denoiser(feature_dim, num_classes, config)
        denoiser.load_state_dict({k.removeprefix("denoiser."): v for k, v in tensors.items() if k.startswith("denoiser.")})
        scaler: Scaler = UnitIntervalMap() if config.resolved_scaling() == "unit_interval" else Standardizer(feature_dim)
        scaler.load_state_dict({k.removeprefix("scaler."): v for k, v in tensors.items() if k.startswith("scaler.")})
        clip: Clip = None
        if "clip.radius" in tensors:
            clip = float(tensors["clip.radius"])
        elif "clip.low" in tensors:
            low, high = tensors["clip.low"], tensors["clip.high"]
            clip = tuple(float(b) if b.ndim == 0 else b.to(device) for b in (low, high))
        return cls(denoiser.to(device).eval(), scaler.to(device), clip, schedule_for(config), config.resolved_prediction())

    def tensors(self) -> dict[str, Tensor]:
        """Everything needed to sample again, as safetensors-ready tensors."""
        state = {f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()}
        state |= {f"scaler.{k}": v for k, v in self.scaler.state_dict().items()}
        if isinstance(self.clip, float):
            state["clip.radius"] = torch.tensor(self.clip)
        elif self.clip is not None:
            state |= {f"clip.{name}": torch.as_tensor(bound) for name, bound in zip(("low", "high"), self.clip, strict=True)}
        return state


def fit_generator(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    config: DiffusionConfig,
    *,
    seed: int,
    device: torch.device,
    before_training: Callable[[TrainState], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    log: Callable[[int, float], None] | None = None,
) -> FeatureGenerator:
    """LDMLR's stage 2 on `features`: the scaler, a denoiser initialised and trained from the
    named streams "denoiser/init", "denoiser/data" and "denoiser/diffusion" of `seed`, sampled from
    its EMA weights with the clip range of the scaled training features. `before_training` may
    load a checkpoint into the fresh state (a run's resume)."""
    from featdiff.training.denoiser import denoiser_state, train_denoiser

    scaler = make_scaler(features, config)
    scaled = scaler.encode(features)
    model = initialise(build_denoiser(features.shape[1], num_classes, config), named_generator(seed, "denoiser/init"))
    schedule = schedule_for(config)
    data, draws = (named_generator(seed, f"denoiser/{purpose}", device) for purpose in ("data", "diffusion"))
    state = denoiser_state(model.to(device), len(labels), config, data, draws=draws)
    if before_training is not None:
        before_training(state)
    train_denoiser(state, scaled, labels, schedule, config, checkpoint=checkpoint, log=log)
    bounds = clip_range(scaled, config)
    if bounds is not None:
        bounds = tuple(b.to(device) if isinstance(b, torch.Tensor) else b for b in bounds)
    return FeatureGenerator(state.ema.module.eval(), scaler, bounds, schedule, config.resolved_prediction())
