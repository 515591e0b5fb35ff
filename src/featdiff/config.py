"""Typed run configuration: YAML in, validated dataclasses out, saved with every run.

Every key is checked when the file is loaded, so a typo or an out-of-range value fails before any
compute is spent, with the dotted key name in the message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from featdiff.errors import UserError

Method = Literal["ce", "fc_retrain", "ldmlr", "ce_finetune", "ldmlr_stale", "ldmlr_refit", "e2e"]
Dataset = Literal["digits", "cifar10", "cifar100"]


@dataclass
class DataConfig:
    dataset: Dataset = "digits"
    imbalance_factor: float = 10.0
    source: Literal["ldmlr-packed", "ldmlr-official", "ldam-official"] = "ldmlr-packed"
    root: str = "../shared/data/cifar-lt"
    validation_fraction: float = 0.0
    """Share of each class's training images held out for validation (never the test set)."""

    def validate(self) -> None:
        _check(self.imbalance_factor >= 1, "data.imbalance_factor", "must be >= 1 (n_max / n_min)")
        _check(0 <= self.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")


@dataclass
class EncoderConfig:
    checkpoint: str | None = None
    """A safetensors encoder to start from (e.g. LDMLR's shipped ResNet-32); None trains one."""
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    milestones: list[int] = field(default_factory=lambda: [20, 25])
    augment_padding: int = 4

    def validate(self) -> None:
        _check(self.epochs >= 1, "encoder.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "encoder.batch_size", "must be >= 1")
        _check(self.lr > 0, "encoder.lr", "must be > 0")
        _check(self.augment_padding >= 0, "encoder.augment_padding", "must be >= 0")


@dataclass
class FeatureConfig:
    style: Literal["eval", "ldmlr"] = "eval"
    """eval: BN in eval mode on clean images; ldmlr: LDMLR's train-mode BN, no stem ReLU."""
    augmented_views: int = 0
    """Extra augmented passes over the training images, added to the clean view (eval style)."""

    def validate(self) -> None:
        _check(self.augmented_views >= 0, "features.augmented_views", "must be >= 0")


@dataclass
class DiffusionConfig:
    faithful: bool = False
    """Preset LDMLR's choices: x0-prediction, SNR weight, [0,1] mapping with clipping, 1000-step DDPM.

    Fields left unset (null) take the preset's value; fields you set win over it.
    """
    schedule: Literal["linear", "cosine"] = "cosine"
    num_steps: int = 1000
    prediction: Literal["eps", "x0"] | None = None
    weighting: Literal["none", "snr", "min_snr"] | None = None
    scaling: Literal["standardize", "unit_interval"] | None = None
    sampler: Literal["ddim", "ddpm"] | None = None
    sample_steps: int | None = None
    eta: float = 1.0
    """DDIM noise level; 1 (stochastic) keeps sample spread right where the denoiser is imperfect."""
    clip_x0: bool = True
    """Clamp x0 estimates while sampling to the training features' per-dimension range (scaled
    space). Without it, ε-errors at the noisiest steps (ᾱ ≈ 1e-9 under the cosine schedule) are
    amplified ~1e4× in the x0 estimate and samples diverge. The faithful preset clamps to [-1, 1]."""
    width: int = 256
    depth: int = 3
    time_dim: int = 128
    dropout: float = 0.0
    steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999

    def validate(self) -> None:
        _check(self.num_steps >= 2, "diffusion.num_steps", "must be >= 2")
        _check(self.steps >= 1, "diffusion.steps", "must be >= 1")
        _check(self.width >= 1 and self.depth >= 1, "diffusion.width", "width and depth must be >= 1")
        _check(self.lr > 0, "diffusion.lr", "must be > 0")
        _check(0 <= self.ema_decay < 1, "diffusion.ema_decay", "must be in [0, 1)")
        _check(self.eta >= 0, "diffusion.eta", "must be >= 0")
        steps = self.resolved_sample_steps()
        _check(1 <= steps <= self.num_steps, "diffusion.sample_steps", f"must be in [1, {self.num_steps}]")

    def resolved_prediction(self) -> Literal["eps", "x0"]:
        return self.prediction or ("x0" if self.faithful else "eps")

    def resolved_weighting(self) -> Literal["none", "snr", "min_snr"]:
        return self.weighting or ("snr" if self.faithful else "none")

    def resolved_scaling(self) -> Literal["standardize", "unit_interval"]:
        return self.scaling or ("unit_interval" if self.faithful else "standardize")

    def resolved_sampler(self) -> Literal["ddim", "ddpm"]:
        return self.sampler or ("ddpm" if self.faithful else "ddim")

    def resolved_sample_steps(self) -> int:
        if self.resolved_sampler() == "ddpm":
            return self.num_steps
        return self.sample_steps or 50


@dataclass
class GenerationConfig:
    count_rule: Literal["ldmlr", "balanced"] = "ldmlr"
    """ldmlr: max(round(ratio * n_c), floor) per class; balanced: fill every class up to the head."""
    ratio: float = 0.2
    floor: int = 5
    pseudo_weight: float = 1.0
    """Loss weight of a pseudo-feature relative to a real one in classifier retraining."""

    def validate(self) -> None:
        _check(self.ratio >= 0, "generation.ratio", "must be >= 0")
        _check(self.floor >= 0, "generation.floor", "must be >= 0")
        _check(self.pseudo_weight >= 0, "generation.pseudo_weight", "must be >= 0")


@dataclass
class ClassifierConfig:
    """LDMLR's stage-3 recipe: Adam 1e-3, wd 1e-5, batch 1024, fc initialised from the encoder's."""

    epochs: int = 400
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-5
    init: Literal["encoder", "random"] = "encoder"

    def validate(self) -> None:
        _check(self.epochs >= 1, "classifier.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "classifier.batch_size", "must be >= 1")
        _check(self.lr > 0, "classifier.lr", "must be > 0")


@dataclass
class PseudoFilterConfig:
    """DiffuLT-style AID/OOD filter: a pseudo-feature's distance to its class prototype in units
    of the class's real radius r_y puts it in a band: ID (d ≤ id_edge·r), AID (≤ aid_edge·r) or
    OOD; each band's samples get a loss weight (0 drops them)."""

    enabled: bool = False
    radius: Literal["max", "rms"] = "max"
    """max: the largest real distance to the prototype (DiffuLT); rms: √tr(Σ_y)."""
    id_edge: float = 1.0
    aid_edge: float = 2.0
    id_weight: float = 1.0
    aid_weight: float = 1.0
    ood_weight: float = 0.0

    def validate(self) -> None:
        _check(0 < self.id_edge <= self.aid_edge, "filter.id_edge", "must satisfy 0 < id_edge <= aid_edge")
        for name in ("id_weight", "aid_weight", "ood_weight"):
            _check(getattr(self, name) >= 0, f"filter.{name}", "must be >= 0")


@dataclass
class ComputeConfig:
    """Speed settings for training the encoder on CUDA (every method's encoder stage, fine-tuning
    and end-to-end training). They are ignored on the CPU, where the runs here are fp32 and
    contiguous."""

    channels_last: bool = True
    bf16_autocast: bool = True
    """The encoder's forward runs under bf16 autocast; features come back as fp32, so the losses,
    the diffusion branch and sampling stay fp32."""
    compile: bool = False
    """torch.compile the encoder's forward (a minute of compilation, worth it for long runs)."""


@dataclass
class FinetuneConfig:
    """Fine-tuning the encoder and classifier (ce_finetune, and the encoder side of e2e)."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    init: Literal["encoder", "scratch"] = "encoder"
    """encoder: start from stage 1's encoder (a shipped checkpoint, or one trained first);
    scratch: from random weights (seeded), no stage 1; use it with trainable: all and the standard
    recipe (lr 0.1, schedule: step, warmup_epochs 5, milestones [160, 180], 200 epochs)."""
    schedule: Literal["cosine", "step"] = "cosine"
    """cosine: from lr to 0 over the budget; step: linear warm-up over warmup_epochs, then ×0.1 at
    each milestone (per epoch, as stage 1)."""
    warmup_epochs: int = 0
    milestones: list[int] = field(default_factory=list)
    trainable: Literal["all", "last_stage"] = "last_stage"
    """last_stage: only layer3 and the fc train; earlier layers (and their BN statistics) stay frozen."""
    augment_padding: int | None = None
    """Random-crop padding; null uses encoder.augment_padding (4 for CIFAR, 1 for 8×8 digits)."""
    classifier_lr_scale: float = 1.0
    """The classifier's learning rate relative to `lr`."""
    classifier_optimizer: Literal["sgd", "adam"] = "sgd"
    """adam: the classifier takes Adam steps (LDMLR's stage-3 optimizer, weight decay 1e-5) while
    the encoder keeps SGD. From features it already separates, a re-balancing loss has tiny
    gradients: SGD barely moves the classifier, Adam's normalised steps do."""

    def validate(self) -> None:
        _check(self.epochs >= 1, "finetune.epochs", "must be >= 1")
        _check(self.batch_size >= 2, "finetune.batch_size", "must be >= 2")
        _check(self.lr > 0, "finetune.lr", "must be > 0")
        _check(self.classifier_lr_scale > 0, "finetune.classifier_lr_scale", "must be > 0")
        _check(self.warmup_epochs >= 0, "finetune.warmup_epochs", "must be >= 0")
        _check(self.init == "encoder" or self.trainable == "all", "finetune.trainable", "must be 'all' when finetune.init is 'scratch'")


@dataclass
class EndToEndConfig:
    """Joint training of encoder E, classifier G and denoiser ε_θ (see featdiff.e2e).

    L_total = L_real + λ_sem·(L_LDM + η_p·L_proto + η_c·L_cov | η_r·L_rad) + γ_ge·L_ge.
    """

    strategy: Literal["A", "B", "C"] = "A"
    lambda_sem: float = 1.0
    gamma_ge: float | None = None
    """Weight of L_ge; null picks the weight that makes real plus pseudo class-balanced with
    `ge_labels: fill` (Σ_c (n_max − n_c) / Σ_c n_c, as LDMLR's balanced filling), else 1."""
    eta_proto: float = 0.1
    semantic: Literal["cov", "rad", "none"] = "cov"
    eta_cov: float = 0.01
    eta_rad: float = 0.1
    radius_kappa: float = 1.0
    semantic_weighting: Literal["none", "alpha_bar", "min_snr"] = "alpha_bar"
    semantic_max_t: int = 250
    """Semantic terms only on timesteps t ≤ this (of diffusion.num_steps); cosine ᾱ_250 ≈ 0.85."""
    semantic_warmup_epochs: float = 1.0
    """Strategy A: η_p, η_c, η_r ramp linearly from 0 over this many epochs."""
    prototype_momentum: float = 0.05
    pseudo_prototype_weight: float = 0.3
    standardizer_momentum: float = 0.01
    ldm_to_encoder: bool = False
    """Let L_LDM's gradient reach E. Off by default: the encoder could shrink its features until
    the noise is trivially predictable (collapse)."""
    collapse_guard: float = 1.0
    """Weight of the variance-floor penalty on E's features, active when ldm_to_encoder is on."""
    collapse_floor: float = 0.5
    """The floor, as a fraction of each dimension's std at the start of training."""
    ge_every: int = 1
    """Strategy A: run the generation branch every k-th step."""
    ge_sample_steps: int = 20
    ge_eta: float = 1.0
    ge_to_denoiser: bool = False
    """Backpropagate L_ge through the (differentiable) DDIM sampler into ε_θ."""
    pseudo_share: float = 0.3
    """Pseudo-features' share of the classifier's batch (strategies A and B; C ramps it)."""
    pseudo_share_start: float = 0.1
    ge_labels: Literal["fill", "uniform"] = "fill"
    """fill: pseudo labels drawn ∝ (n_max − n_c), topping up the tail; uniform: every class alike."""
    ratio_denoiser_steps: int = 1
    """Strategy B: denoiser steps per encoder/classifier step (1 for 1:1, 2 for 2:1)."""
    cached_pseudo: bool = False
    """Strategy B: reuse one pseudo batch per epoch instead of sampling afresh each step."""
    warmup_real_epochs: float = 1.0
    """Strategy C: epochs with L_real only."""
    ldm_only_epochs: float = 1.0
    """Strategy C: epochs with L_real + L_LDM^sem before L_ge switches on."""
    denoiser_lr: float = 1e-3
    denoiser_pretrain_steps: int = 2000
    """Steps fitting ε_θ on the starting encoder's features before joint training."""
    clip_follows_encoder: bool | None = None
    """Few-step sampling clips x̂0 to each dimension's range in scaled space. false: the starting
    features' range; true: the range of the features seen in the last epoch, so it follows an
    encoder that moves far (from scratch); null: true exactly when finetune.init is scratch."""
    rebalance_classifier: bool = False
    """After joint training, retrain G as LDMLR's stage 3 does (`classifier`, `generation`,
    `filter`), on the final encoder's features plus pseudo-features of the co-trained ε_θ. No
    denoiser refit is needed: ε_θ followed the encoder."""
    rebalance_features: Literal["eval", "as_trained"] = "eval"
    """Real training features for the re-balancing stage. eval: clean images, BN in eval mode;
    as_trained: one augmented pass with the fine-tuned layers' BN in train mode, as ε_θ saw
    them during joint training (test features stay eval-mode either way)."""

    def validate(self) -> None:
        for name in ("lambda_sem", "eta_proto", "eta_cov", "eta_rad", "radius_kappa", "collapse_guard"):
            _check(getattr(self, name) >= 0, f"e2e.{name}", "must be >= 0")
        _check(self.gamma_ge is None or self.gamma_ge >= 0, "e2e.gamma_ge", "must be >= 0 or null")
        _check(0 < self.prototype_momentum <= 1, "e2e.prototype_momentum", "must be in (0, 1]")
        _check(0 < self.standardizer_momentum <= 1, "e2e.standardizer_momentum", "must be in (0, 1]")
        _check(0 <= self.pseudo_share < 1, "e2e.pseudo_share", "must be in [0, 1)")
        _check(0 <= self.pseudo_share_start < 1, "e2e.pseudo_share_start", "must be in [0, 1)")
        _check(self.ge_every >= 1, "e2e.ge_every", "must be >= 1")
        _check(self.ge_sample_steps >= 1, "e2e.ge_sample_steps", "must be >= 1")
        _check(self.ratio_denoiser_steps >= 1, "e2e.ratio_denoiser_steps", "must be >= 1")
        _check(self.collapse_floor >= 0, "e2e.collapse_floor", "must be >= 0")
        _check(self.denoiser_pretrain_steps >= 0, "e2e.denoiser_pretrain_steps", "must be >= 0")
        _check(self.denoiser_lr > 0, "e2e.denoiser_lr", "must be > 0")
        _check(self.semantic_max_t >= 0, "e2e.semantic_max_t", "must be >= 0")


@dataclass
class RunConfig:
    name: str = "run"
    method: Method = "ldmlr"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    filter: PseudoFilterConfig = field(default_factory=PseudoFilterConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    e2e: EndToEndConfig = field(default_factory=EndToEndConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def validate(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", "must be a non-empty name without '/'")
        sections = (self.data, self.encoder, self.features, self.diffusion, self.generation, self.classifier)
        for section in (*sections, self.filter, self.finetune, self.e2e):
            section.validate()
        if self.data.dataset == "digits":
            _check(self.encoder.checkpoint is None, "encoder.checkpoint", "digits has no shipped encoder; leave it null")
        if self.finetune.init == "scratch":
            _check(
                self.method in ("ce_finetune", "ldmlr_refit", "e2e"),
                "finetune.init",
                f"'scratch' has no starting encoder for method {self.method}; use ce_finetune, ldmlr_refit or e2e, or init: encoder",
            )
            _check(self.encoder.checkpoint is None, "encoder.checkpoint", "must be null when finetune.init is 'scratch'")


def _check(ok: bool, key: str, requirement: str) -> None:
    if not ok:
        raise UserError(f"config key '{key}' {requirement}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or fail naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(annotation, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[0] if len(errors) == 1 else f"config key '{key}' has invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise UserError(f"config key '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            value = _parse_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _parse_float(text: str) -> float | str:
    """YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it obviously is."""
    try:
        return float(text)
    except ValueError:
        return text


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown config key '{prefix}{unknown[0]}' (valid keys: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """`key=value` strings from the command line; values are parsed as YAML (so 1e-3, true, null work)."""
    parsed = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {pair!r} (e.g. --set seed=1)")
        parsed.append((key.strip(), yaml.safe_load(raw)))
    return parsed


def config_from_dict(values: dict, overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    tree = dict(values)
    for key, value in overrides:
        _set_dotted(tree, key, value)
    config = _build(RunConfig, tree)
    config.validate()
    return config


def load_config(path: Path, overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    if not path.is_file():
        raise UserError(f"config file not found: {path} (see configs/ for examples)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return config_from_dict(values, overrides)


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
