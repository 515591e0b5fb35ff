"""The jointly trained system: encoder E (with its classifier G = E.fc), denoiser ε_θ, and the
running statistics they share, in one module so one state_dict checkpoints (or averages) it all."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from featdiff.config import EndToEndConfig
from featdiff.diffusion.parameterization import Prediction
from featdiff.diffusion.scaling import RunningStandardizer
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.generation.pseudo import FeatureGenerator
from featdiff.statistics import ClassStatistics


class EndToEndModel(nn.Module):
    def __init__(self, encoder: nn.Module, denoiser: nn.Module, num_classes: int, config: EndToEndConfig) -> None:
        super().__init__()
        feature_dim = int(encoder.feature_dim)
        self.encoder = encoder
        self.denoiser = denoiser
        self.num_classes = num_classes
        self.standardizer = RunningStandardizer(feature_dim, momentum=config.standardizer_momentum)
        self.stats = ClassStatistics(num_classes, feature_dim, momentum=config.prototype_momentum)
        self.register_buffer("feature_floor", torch.zeros(feature_dim))
        self.register_buffer("pseudo_label_probs", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("clip_low", torch.full((feature_dim,), -math.inf))
        self.register_buffer("clip_high", torch.full((feature_dim,), math.inf))
        # The range of the scaled features seen since the last `follow_range`.
        self.register_buffer("seen_low", torch.full((feature_dim,), math.inf))
        self.register_buffer("seen_high", torch.full((feature_dim,), -math.inf))

    @property
    def classifier(self) -> nn.Module:
        return self.encoder.fc

    def feature_generator(self, schedule: NoiseSchedule, prediction: Prediction) -> FeatureGenerator:
        """The co-trained denoiser as a pseudo-feature generator, clipping x̂0 to the tracked range."""
        return FeatureGenerator(self.denoiser, self.standardizer, (self.clip_low, self.clip_high), schedule, prediction)

    @torch.no_grad()
    def initialise_statistics(self, features: Tensor, labels: Tensor, train_counts: Tensor, config: EndToEndConfig) -> None:
        """Statistics of the starting encoder's features: scaling, prototypes, the collapse floor,
        the label distribution of pseudo-features, and the per-dimension range (in scaled space)
        that few-step sampling clips x̂0 to, as `ldmlr` does: without it, the first DDIM steps'
        x̂0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ, with ᾱ ≈ 1e-9, throw samples far off the data."""
        self.standardizer.fit(features)
        scaled = self.standardizer.encode(features)
        self.clip_low.copy_(scaled.min(0).values)
        self.clip_high.copy_(scaled.max(0).values)
        self.stats.fit(features, labels)
        self.feature_floor.copy_(config.collapse_floor * self.standardizer.std)
        self.pseudo_label_probs.copy_(pseudo_label_distribution(train_counts, config.ge_labels))

    @torch.no_grad()
    def observe_range(self, features: Tensor) -> None:
        """Widen the seen range by a batch of E's features, in the current scaled space."""
        scaled = self.standardizer.encode(features)
        torch.minimum(self.seen_low, scaled.min(0).values, out=self.seen_low)
        torch.maximum(self.seen_high, scaled.max(0).values, out=self.seen_high)

    @torch.no_grad()
    def follow_range(self) -> None:
        """Clip to the range seen since the last call (if any), and start a new one."""
        if bool(torch.isfinite(self.seen_low).all()):
            self.clip_low.copy_(self.seen_low)
            self.clip_high.copy_(self.seen_high)
        self.seen_low.fill_(math.inf)
        self.seen_high.fill_(-math.inf)


def pseudo_label_distribution(train_counts: Tensor, rule: str) -> Tensor:
    """fill: ∝ n_max − n_c, so real plus pseudo tends to balance; uniform otherwise (or if the
    data is already balanced)."""
    counts = train_counts.double()
    if rule == "fill":
        deficit = counts.max() - counts
        if deficit.sum() > 0:
            return (deficit / deficit.sum()).float()
    return torch.full_like(counts, 1.0 / counts.numel()).float()


def resolve_generation_weight(config: EndToEndConfig, train_counts: Tensor) -> EndToEndConfig:
    """The config with γ_ge filled in: with pseudo labels ∝ n_max − n_c and weight
    Σ(n_max − n_c)/Σn_c, the classifier's loss L_real + γ·L_ge weighs every class equally."""
    if config.gamma_ge is not None:
        return config
    counts = train_counts.double()
    deficit = float((counts.max() - counts).sum())
    weight = deficit / float(counts.sum()) if config.ge_labels == "fill" and deficit > 0 else 1.0
    return config.model_copy(update={"gamma_ge": weight})


def trained_prior(config: EndToEndConfig, train_counts: Tensor, pseudo_label_probs: Tensor) -> Tensor:
    """Class prior of what G was trained on, (p_real + γ·p_pseudo)/(1 + γ), for logit adjustment."""
    real = train_counts.double() / train_counts.sum()
    gamma = float(config.gamma_ge or 0.0)
    return (real + gamma * pseudo_label_probs.double().cpu()) / (1 + gamma)
