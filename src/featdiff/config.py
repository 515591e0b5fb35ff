"""Typed run configuration: YAML in, validated immutable models out, saved with every run.

Every key is checked when the file is loaded, so a typo or an out-of-range value fails before any
compute is spent, with the dotted key name in a one-line message.

Why pydantic: it is a validation library, so each field's type, default and allowed range are
declared once, in one place (the annotation and its `Field`), instead of in a hand-written
YAML-to-dataclass coercer plus a separate `validate()` per section that had to be kept in step.
The models are strict (no silent "3" → 3, no true → 1, unknown keys rejected) and frozen; derive a
changed copy with `config.model_copy(update={...})`. Rules that involve several fields of one
section live in that section's `model_validator`; rules over several sections that hold for
every method in `RunConfig`'s. A method's own rules live in its module (`featdiff.method_catalog`
finds them by the method's name, torch-free) and run at load time too; the privacy section's
rules apply to private runs only (`privacy_rules`), the federated section's to `featdiff
federated` runs only (`check_federated`). This module imports no torch, so the CLI can check a config before it
pays for importing it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from featdiff.errors import UserError
from featdiff.method_catalog import method_named, method_names

Dataset = Literal["digits", "cifar10", "cifar100"]


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it obviously is, and
    store whole numbers given for a float field as floats (so a dumped config reads back equal)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


Float = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
"""A finite float that also takes YAML's dotless exponent strings (`1e-4`); bools are rejected."""


class _Section(BaseModel):
    # strict: no str→int or bool↔int coercion; forbid: a misspelt key is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def config_rule(ok: bool, field: str, requirement: str) -> None:
    """A rule involving several fields; `field` (dotted, relative to the model; from the config's
    root in a method's `rules`) is the key to name. Raised inside validation, it becomes the
    one-line message "config key '<field>' <requirement>"."""
    if not ok:
        raise PydanticCustomError("config_rule", requirement, {"field": field})


class DataConfig(_Section):
    dataset: Dataset = "digits"
    imbalance_factor: Float = Field(10.0, ge=1)
    """n_max / n_min."""
    source: Literal["ldmlr-packed", "ldmlr-official", "ldam-official", "folder", "features"] = "ldmlr-packed"
    """Where the images come from. `folder`: your own images under `root` (train/<class>/… and
    test/<class>/…, or the `train_list`/`test_list` files; `featdiff.data.image_folder`);
    `features`: no images, a file of feature vectors (`features`) from any encoder, for the
    methods that need features only (`featdiff.data.feature_file`)."""
    image_size: int = Field(32, ge=8)
    """`folder`: every image's shorter side is resized to this and centre-cropped to a square."""
    train_list: str = ""
    """`folder`: a list file of `relative/path label` lines under `root` (ImageNet-LT's layout); with `test_list`."""
    test_list: str = ""
    features: str = ""
    """With source `features`: a .safetensors or .npz file with train_features, train_labels,
    test_features, test_labels (and optionally class_names), e.g. one `featdiff encode` wrote."""
    root: str = "../shared/data/cifar-lt"
    train_holdout_fraction: Float = Field(0.0, ge=0, lt=1)
    """Share of each class's training images held out of training and scored as `train_holdout`.
    Not a validation set for choosing knobs: the shipped encoders memorised their training
    images, so held-out training images are not test-like (that is `evaluation`'s validation part).
    Configs written before the rename say `validation_fraction`; it is read as this key."""

    @model_validator(mode="after")
    def _features_file_with_its_source(self) -> DataConfig:
        if self.source == "features":
            config_rule(bool(self.features), "features", "must name a features file (.safetensors or .npz) when data.source is 'features'")
            holdout_free = self.train_holdout_fraction == 0
            config_rule(holdout_free, "train_holdout_fraction", "must be 0 for data.source 'features' (no images to hold out)")
        else:
            config_rule(not self.features, "features", f"is read only with data.source: features, not {self.source!r}; leave it empty")
        return self

    @model_validator(mode="before")
    @classmethod
    def _renamed_holdout(cls, values: Any) -> Any:
        if isinstance(values, dict) and "validation_fraction" in values and "train_holdout_fraction" not in values:
            values = dict(values)
            values["train_holdout_fraction"] = values.pop("validation_fraction")
        return values


class EvaluationConfig(_Section):
    """The validation protocol (`featdiff.evaluation.protocol`): each class's test images are split
    once into a validation part, on which every knob is chosen, and a disjoint report part, which
    the tables report. Every summary in results.json has both (`validation`, `report`) besides the
    full test set, and `tuned`: logit adjustment with τ chosen on the validation part."""

    validation_fraction: Float = Field(0.2, gt=0, lt=1)
    """Share of every class's test images in the validation part (the rest is the report part)."""
    validation_seed: int = 0
    """Seeds the split, not the run's seed: every run and seed of a dataset sees the same parts."""
    controls: bool = True
    """Train the controls beside the method (the cheap heads; `gaussian` beside `ldmlr`). false
    in a sweep that reads only the method's validation numbers; `ce` is always evaluated."""
    test_time_flip: bool = False
    """Score every classifier on the mean of each test image's and its mirror image's eval-mode
    features (test-time augmentation; for a linear head, the mean of the two views' logits). It
    changes the test and train-holdout features only, for the method and its controls alike, so
    compare runs with equal settings. Images only (a features file has none), and not digits,
    whose mirror images are other digits."""
    shuffle_report_labels: bool = False
    """A check of the protocol, not a setting: the report part is scored against permuted labels
    (its numbers become meaningless); every validation number and every choice must not change."""


class EncoderConfig(_Section):
    architecture: Literal["auto", "resnet32", "small_cnn"] = "auto"
    """The encoder trained or loaded: auto is the digits CNN for digits and ResNet-32 otherwise
    (CIFAR, and your folder of images at `data.image_size`)."""
    checkpoint: str | None = None
    """A safetensors encoder to start from (e.g. LDMLR's shipped ResNet-32); None trains one."""
    public: bool = False
    """The checkpoint was trained on other data than this run's (e.g. the CIFAR-100-LT encoder for
    CIFAR-10-LT): only its features are used, its classifier is replaced by a fresh one for this
    dataset's classes, and `ce` (the encoder as it is) is not evaluated. With it, ldmlr_dp's
    guarantee covers the whole pipeline from the training images on."""
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: Float = Field(0.1, gt=0)
    momentum: Float = 0.9
    weight_decay: Float = 5e-4
    warmup_epochs: int = 5
    milestones: list[int] = Field(default_factory=lambda: [20, 25])
    augment_padding: int = Field(4, ge=0)


class FeatureConfig(_Section):
    style: Literal["eval", "ldmlr"] = "eval"
    """eval: BN in eval mode on clean images; ldmlr: LDMLR's train-mode BN, no stem ReLU."""
    augmented_views: int = Field(0, ge=0)
    """Extra augmented passes over the training images, added to the clean view (eval style)."""


class DiffusionConfig(_Section):
    faithful: bool = False
    """Preset LDMLR's choices: x0-prediction, SNR weight, [0,1] mapping with clipping, 1000-step DDPM.

    Fields left unset (null) take the preset's value; fields you set win over it.
    """
    schedule: Literal["linear", "cosine"] = "cosine"
    num_steps: int = Field(1000, ge=2)
    prediction: Literal["eps", "x0"] | None = None
    weighting: Literal["none", "snr", "min_snr"] | None = None
    scaling: Literal["standardize", "unit_interval"] | None = None
    sampler: Literal["ddim", "ddpm"] | None = None
    sample_steps: Annotated[int, Field(ge=1)] | None = None
    """DDIM steps when sampling; null: 50 (the ddpm sampler always takes num_steps)."""
    eta: Float = Field(1.0, ge=0)
    """DDIM noise level; 1 (stochastic) keeps sample spread right where the denoiser is imperfect."""
    clip_x0: bool = True
    """Clamp x0 estimates while sampling to the training features' per-dimension range (scaled
    space). Without it, ε-errors at the noisiest steps (ᾱ ≈ 1e-9 under the cosine schedule) are
    amplified ~1e4× in the x0 estimate and samples diverge. The faithful preset clamps to [-1, 1]."""
    guidance: Float = Field(1.0, ge=0)
    """Classifier-free guidance scale w when sampling: ε̂_∅ + w·(ε̂_y − ε̂_∅). 1 is the conditional
    model; w < 1 mixes in the unconditional one (a wider, class-blurred spread); w > 1 sharpens.
    Needs a trained null class: `label_dropout` > 0 (a private denoiser's Phase I trains it label-free)."""
    label_dropout: Float = Field(0.0, ge=0, lt=1)
    """Share of training labels replaced by the null class, so that the unconditional model exists."""
    clip_widen: Float = Field(1.0, gt=0)
    """x̂0's clip box (the training range per dimension) scaled about its centre by this factor
    while sampling: > 1 lets samples leave the memorised range."""
    denoiser_from: str = ""
    """A finished `ldmlr` run folder whose denoiser this run samples instead of fitting its own
    (a sweep over sampling, transfer and classifier knobs fits one denoiser). Its saved config
    must agree on everything the denoiser depends on: data, encoder, features, seed and the
    diffusion keys other than the sampler's (checked before the run starts)."""
    width: int = Field(256, ge=1)
    depth: int = Field(3, ge=1)
    time_dim: int = 128
    dropout: Float = 0.0
    steps: int = Field(3000, ge=1)
    batch_size: int = 512
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = 0.0
    ema_decay: Float = Field(0.999, ge=0, lt=1)

    @model_validator(mode="after")
    def _sample_steps_fit(self) -> DiffusionConfig:
        steps = self.resolved_sample_steps()
        config_rule(1 <= steps <= self.num_steps, "sample_steps", f"must be in [1, {self.num_steps}] (diffusion.num_steps), got {steps}")
        return self

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


class GenerationConfig(_Section):
    """How many pseudo-features of each class, how they are post-processed (`featdiff.generation`),
    and what the classifier trains on. Every knob applies to every generator (the diffusion
    model of `ldmlr`, the class Gaussian of `gaussian`)."""

    count_rule: Literal["ldmlr", "balanced", "uniform"] = "ldmlr"
    """ldmlr: max(round(ratio * n_c), floor) per class; balanced: fill every class up to the head;
    uniform: `per_class` of every class (with include_real: false, a balanced pseudo-only set)."""
    ratio: Float = Field(0.2, ge=0)
    floor: int = Field(5, ge=0)
    per_class: Annotated[int, Field(ge=1)] | None = None
    """The uniform rule's count per class; null: the head class's training count."""
    pseudo_weight: Float = Field(1.0, ge=0)
    """Loss weight of a pseudo-feature relative to a real one in classifier retraining."""
    include_real: bool = True
    """false: the classifier trains on pseudo-features alone (pseudo-only)."""
    temperature: Float = Field(1.0, gt=0)
    """Spread of every class's samples (the sampler's noise, the Gaussian's draws), times
    (n_max / n_c)^temperature_power: tail classes' test features are wider than their training features."""
    temperature_power: Float = Field(0.0, ge=0)
    transfer: Literal["none", "calibration", "residual"] = "none"
    """Head-to-tail transfer on the generator's output (`featdiff.generation.transfer`): a class
    borrows mean and variation from its nearest more frequent classes, by a Gaussian of their
    covariance (calibration, Yang et al. 2021) or by their real residuals (residual, as RSG)."""
    transfer_strength: Float = Field(0.5, ge=0, le=1)
    """β: the rarest class's share of borrowed statistics (class c's: β·(1 − n_c / n_max))."""
    transfer_neighbours: int = Field(3, ge=1)
    """k: how many of the nearest more frequent classes a class borrows from."""
    shrinkage: Float = Field(0.2, ge=0, le=1)
    """The class Gaussian's covariance shrinkage λ towards the pooled within-class covariance (`gaussian`)."""
    covariance: Literal["auto", "full", "pooled"] = "auto"
    """The class Gaussian's covariances: one per class (full), or the pooled within-class one for
    every class (pooled: memory C·D + D² instead of C·D²); auto: full while C·D² float64 take at
    most 2 GB (CIFAR: 3 MB), else pooled (ImageNet-LT at D = 2048: 34 GB)."""

    @model_validator(mode="after")
    def _pseudo_only_fills_every_class(self) -> GenerationConfig:
        config_rule(
            self.include_real or self.count_rule == "uniform",
            "include_real",
            f"false (pseudo-only) needs count_rule: uniform, so that every class has pseudo-features; got count_rule {self.count_rule!r}",
        )
        return self


class ClassifierConfig(_Section):
    """LDMLR's stage-3 recipe: Adam 1e-3, wd 1e-5, batch 1024, fc initialised from the encoder's."""

    epochs: int = Field(400, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = 1e-5
    init: Literal["encoder", "random"] = "encoder"
    loss: Literal["ce", "logit_adjusted", "margin"] = "ce"
    """ce: LDMLR's weighted cross-entropy; logit_adjusted: cross-entropy of logits + τ·log(π), π the
    class prior of the set the head trains on (real counts plus pseudo-features' weight; Menon et
    al., ICLR 2021), so it learns the balanced posterior; margin: LDAM's margins (Cao et al.,
    NeurIPS 2019), Δ_c ∝ n_c^(-1/4) subtracted from the true class's logit, the rarest class's = `margin`."""
    loss_tau: Float = Field(1.0, ge=0)
    """τ of the logit-adjusted loss."""
    margin: Float = Field(0.5, gt=0)
    """The largest margin of the margin loss (the rarest class's), in logit units. On raw features
    the head can absorb part of any margin into a larger logit scale; LDAM normalises for that
    reason (`normalize: true` fixes the features' norm)."""
    normalize: bool = False
    """Train (and evaluate) the head on L2-normalised features, scaled to the sphere of radius √D."""


class PseudoFilterConfig(_Section):
    """DiffuLT-style AID/OOD filter: a pseudo-feature's distance to its class prototype in units
    of the class's real radius r_y puts it in a band: ID (d ≤ id_edge·r), AID (≤ aid_edge·r) or
    OOD; each band's samples get a loss weight (0 drops them)."""

    enabled: bool = False
    radius: Literal["max", "rms"] = "max"
    """max: the largest real distance to the prototype (DiffuLT); rms: √tr(Σ_y)."""
    id_edge: Float = Field(1.0, gt=0)
    aid_edge: Float = 2.0
    id_weight: Float = Field(1.0, ge=0)
    aid_weight: Float = Field(1.0, ge=0)
    ood_weight: Float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _edges_ordered(self) -> PseudoFilterConfig:
        config_rule(self.id_edge <= self.aid_edge, "id_edge", f"must satisfy 0 < id_edge <= aid_edge, got {self.id_edge} > {self.aid_edge}")
        return self


class ComputeConfig(_Section):
    """Speed settings for training the encoder on CUDA (every method's encoder stage, fine-tuning
    and end-to-end training). They are ignored on the CPU, where the runs here are fp32 and
    contiguous, except `threads`."""

    channels_last: bool = True
    bf16_autocast: bool = True
    """The encoder's forward runs under bf16 autocast; features come back as fp32, so the losses,
    the diffusion branch and sampling stay fp32."""
    compile: bool = False
    """torch.compile the encoder's forward (a minute of compilation, worth it for long runs)."""
    threads: Annotated[int, Field(ge=1)] | None = None
    """torch threads for this run (torch.set_num_threads); null keeps torch's default. Set 1 when
    two runs share a 2-core machine, where two processes with default threads run 3–20× slower."""


class FinetuneConfig(_Section):
    """Fine-tuning the encoder and classifier (ce_finetune, and the encoder side of e2e)."""

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: Float = Field(0.01, gt=0)
    momentum: Float = 0.9
    weight_decay: Float = 5e-4
    init: Literal["encoder", "scratch"] = "encoder"
    """encoder: start from stage 1's encoder (a shipped checkpoint, or one trained first);
    scratch: from random weights (seeded), no stage 1; use it with trainable: all and the standard
    recipe (lr 0.1, schedule: step, warmup_epochs 5, milestones [160, 180], 200 epochs)."""
    schedule: Literal["cosine", "step"] = "cosine"
    """cosine: from lr to 0 over the budget; step: linear warm-up over warmup_epochs, then ×0.1 at
    each milestone (per epoch, as stage 1)."""
    warmup_epochs: int = Field(0, ge=0)
    milestones: list[int] = Field(default_factory=list)
    trainable: Literal["all", "last_stage"] = "last_stage"
    """last_stage: only layer3 and the fc train; earlier layers (and their BN statistics) stay frozen."""
    augment_padding: int | None = None
    """Random-crop padding; null uses encoder.augment_padding (4 for CIFAR, 1 for 8×8 digits)."""
    classifier_lr_scale: Float = Field(1.0, gt=0)
    """The classifier's learning rate relative to `lr`."""
    loss: Literal["ce", "logit_adjusted"] = "ce"
    """The classifier's loss while the encoder trains (`ce_finetune`, and G's real and pseudo terms
    in `e2e`): cross-entropy, or logit-adjusted by the prior of what G trains on (real counts, plus
    the generation branch's pseudo-labels in e2e), which judges e2e on the footing of the LA controls."""
    classifier_optimizer: Literal["sgd", "adam"] = "sgd"
    """adam: the classifier takes Adam steps (LDMLR's stage-3 optimizer, weight decay 1e-5) while
    the encoder keeps SGD. From features it already separates, a re-balancing loss has tiny
    gradients: SGD barely moves the classifier, Adam's normalised steps do."""

    @model_validator(mode="after")
    def _scratch_trains_everything(self) -> FinetuneConfig:
        config_rule(self.init == "encoder" or self.trainable == "all", "trainable", "must be 'all' when finetune.init is 'scratch'")
        return self


class EndToEndConfig(_Section):
    """Joint training of encoder E, classifier G and denoiser ε_θ (see featdiff.methods.e2e).

    L_total = L_real + λ_sem·(L_LDM + η_p·L_proto + η_c·L_cov | η_r·L_rad) + γ_ge·L_ge.
    """

    strategy: Literal["A", "B", "C"] = "A"
    lambda_sem: Float = Field(1.0, ge=0)
    gamma_ge: Annotated[Float, Field(ge=0)] | None = None
    """Weight of L_ge; null picks the weight that makes real plus pseudo class-balanced with
    `ge_labels: fill` (Σ_c (n_max − n_c) / Σ_c n_c, as LDMLR's balanced filling), else 1."""
    eta_proto: Float = Field(0.1, ge=0)
    semantic: Literal["cov", "rad", "none"] = "cov"
    eta_cov: Float = Field(0.01, ge=0)
    eta_rad: Float = Field(0.1, ge=0)
    radius_kappa: Float = Field(1.0, ge=0)
    semantic_weighting: Literal["none", "alpha_bar", "min_snr"] = "alpha_bar"
    semantic_max_t: int = Field(250, ge=0)
    """Semantic terms only on timesteps t ≤ this (of diffusion.num_steps); cosine ᾱ_250 ≈ 0.85."""
    semantic_warmup_epochs: Float = 1.0
    """Strategy A: η_p, η_c, η_r ramp linearly from 0 over this many epochs."""
    prototype_momentum: Float = Field(0.05, gt=0, le=1)
    pseudo_prototype_weight: Float = 0.3
    standardizer_momentum: Float = Field(0.01, gt=0, le=1)
    ldm_to_encoder: bool = False
    """Let L_LDM's gradient reach E. Off by default: the encoder could shrink its features until
    the noise is trivially predictable (collapse)."""
    collapse_guard: Float = Field(1.0, ge=0)
    """Weight of the variance-floor penalty on E's features, active when ldm_to_encoder is on."""
    collapse_floor: Float = Field(0.5, ge=0)
    """The floor, as a fraction of each dimension's std at the start of training."""
    ge_every: int = Field(1, ge=1)
    """Strategy A: run the generation branch every k-th step."""
    ge_sample_steps: int = Field(20, ge=1)
    ge_eta: Float = 1.0
    ge_to_denoiser: bool = False
    """Backpropagate L_ge through the (differentiable) DDIM sampler into ε_θ."""
    pseudo_share: Float = Field(0.3, ge=0, lt=1)
    """Pseudo-features' share of the classifier's batch (strategies A and B; C ramps it)."""
    pseudo_share_start: Float = Field(0.1, ge=0, lt=1)
    ge_labels: Literal["fill", "uniform"] = "fill"
    """fill: pseudo labels drawn ∝ (n_max − n_c), topping up the tail; uniform: every class alike."""
    ratio_denoiser_steps: int = Field(1, ge=1)
    """Strategy B: denoiser steps per encoder/classifier step (1 for 1:1, 2 for 2:1)."""
    cached_pseudo: bool = False
    """Strategy B: reuse one pseudo batch per epoch instead of sampling afresh each step."""
    warmup_real_epochs: Float = 1.0
    """Strategy C: epochs with L_real only."""
    ldm_only_epochs: Float = 1.0
    """Strategy C: epochs with L_real + L_LDM^sem before L_ge switches on."""
    denoiser_lr: Float = Field(1e-3, gt=0)
    denoiser_pretrain_steps: int = Field(2000, ge=0)
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


class PrivacyConfig(_Section):
    """Differentially private training of the feature denoiser in dp-promise's two phases
    (method `ldmlr_dp`; see featdiff.privacy and the README's threat model).

    Every training feature vector is clipped to L2 norm `norm_bound` (R) and scaled by √D/R, both
    fixed a priori (never computed from the private features). Phase I trains on t ∈ [S, T),
    label-free, Poisson-sampled, one noise draw per visit, unclipped and unnoised: the forward
    noise is its Gaussian mechanism. Phase II trains on t ∈ [0, S) with DP-SGD: Poisson
    sampling, `draws` (K) noise draws per example averaged before clipping to `clip_norm` (C),
    Gaussian noise σ·C."""

    epsilon: Annotated[Float, Field(gt=0)] | None = None
    """Target ε at `delta`; null: not private (ε = ∞), the same two phases without clipping or noise."""
    delta: Float = Field(1e-5, gt=0, lt=1)
    """Must be below 1/N for the N training records (checked when the data is known)."""
    adjacency: Literal["replace_one", "add_remove_one"] = "replace_one"
    """Neighbouring datasets differ in one record replaced (dp-promise's choice: Phase I's sensitivity
    2R, DP-SGD's clipped sums accounted with the replace-one pair) or one record added or removed (R)."""
    norm_bound: Float = Field(8.0, gt=0)
    """R: every feature vector is clipped to this L2 norm (ResNet-32 features have norms ~4–8)."""
    split_timestep: int = Field(900, ge=1)
    """S: Phase I covers t ∈ [S, T), Phase II t ∈ [0, S) (of diffusion.num_steps). Phase I's
    privacy rests on ᾱ_S being tiny: 900 is dp-promise's value for its linear schedule
    (ᾱ ≈ 2.8e-4); under the cosine schedule ᾱ falls that low only near t ≈ 0.985·T."""
    phase_one_batch: int = Field(256, ge=1)
    """Expected Poisson batch of Phase I."""
    phase_one_epochs: Float = Field(20.0, ge=0)
    phase_two_batch: int = Field(1024, ge=1)
    """Expected Poisson batch of Phase II; the noisy gradient sum is divided by it."""
    phase_two_epochs: Float = Field(50.0, gt=0)
    clip_norm: Float = Field(1.0, gt=0)
    """C: per-example gradient norm bound of Phase II."""
    noise_multiplier: Annotated[Float, Field(gt=0)] | None = None
    """σ of Phase II; null: calibrated so that both phases together spend `epsilon`."""
    draws: int = Field(4, ge=1)
    """K noise draws (t, ε) per example in Phase II, averaged before clipping."""
    phase_one_accounting: Literal["dp_promise", "per_record"] = "dp_promise"
    """How Phase I's release of noisy inputs is accounted. dp_promise: as a Poisson-subsampled
    Gaussian sum, dp-promise's argument (not proven for the set of separate noisy points its
    unclipped training may reveal); per_record: every noisy input traced to its record, a bound
    that needs no such argument and costs far more (replace-one adjacency and the prv accountant only).
    Every private run reports both."""
    accountant: Literal["prv", "clt"] = "prv"
    """prv: tight accounting of both phases (Opacus's PRV; dp-accounting's PLD once Phase II has the
    replace-one pair), what featdiff claims; clt: dp-promise's GDP central-limit formula, which
    under-reports ε (kept to reproduce the paper; it knows only the add/remove pair)."""
    gradients: Literal["ghost", "functorch", "opacus"] = "ghost"
    """How per-example gradients are clipped: ghost norms (no per-example gradients), torch.func,
    or Opacus's hooks (the reference); all give the same clipped sum."""
    lr: Float = Field(1e-3, gt=0)
    """Adam learning rate of both phases (constant)."""
    release_per_class: int = Field(500, ge=1)
    """Pseudo-features released per class: a fixed number, never derived from private counts."""
    reproducible_noise: bool = False
    """false: the Poisson masks and the Gaussian noise come from generators seeded from the
    operating system's entropy and never stored, so nobody can replay them. true: they come from
    named streams of `seed`, for tests and benchmarks that must be replayable; the (ε, δ) claim
    then does not hold against anyone who knows the seed (which config.yaml records)."""
    ldmlr_control: bool = True
    """Also fit non-private LDMLR in the same run as a control (a full LDMLR fit); a sweep over ε
    turns it off in all but one run per seed (`benchmarks/privacy.py`)."""
    count_share: Float = Field(0.1, gt=0, lt=1)
    """`dp_linear`, `dp_gaussian`: the share of ε the Gaussian release of the class counts spends
    (calibrated alone); the class prior of their logit adjustment and their class sizes come from it."""
    moments_mean_share: Float = Field(0.7, gt=0, lt=1)
    """`dp_gaussian`: of the class moments' budget (GDP μ²), the share of the class sums; the rest
    goes to the sums of outer products (covariances matter less than means for a linear head)."""
    linear_epochs: Float = Field(20.0, gt=0)
    """`dp_linear`: epochs of DP-SGD on the linear head (Poisson batches of expected size `linear_batch`)."""
    linear_batch: int = Field(1024, ge=1)
    linear_lr: Float = Field(0.01, gt=0)
    """`dp_linear`: Adam's learning rate."""
    linear_clip: Float = Field(1.0, gt=0)
    """`dp_linear`: C, the per-example gradient norm bound of the head's DP-SGD."""
    linear_release: Literal["none", "gaussian"] = "none"
    """`dp_linear`: also train on pseudo-features of a DP class-Gaussian release (post-processing:
    free once released); the release and the DP-SGD then share the budget (`release_share`)."""
    release_share: Float = Field(0.5, gt=0, lt=1)
    """`dp_linear` with a release: the share of ε spent once counts and class moments are out."""
    linear_pseudo_weight: Float = Field(0.5, ge=0, lt=1)
    """`dp_linear` with a release: each step's gradient is (1 − w)·(private real gradient) + w·(pseudo gradient)."""


RENAMED_ALGORITHMS = {"feddpm": "fedddpm", "feddpm_plus": "fedddpm_plus"}
"""Earlier spellings of `federated.algorithm`, still accepted (FedDDPM is federated DDPM)."""


def _current_algorithm_name(value: Any) -> Any:
    return RENAMED_ALGORITHMS.get(value, value) if isinstance(value, str) else value


class FederatedConfig(_Section):
    """Federated LDMLR (featdiff.federated): LDMLR's long-tailed training split spread over
    `clients` by a per-class Dirichlet(`alpha`), seeded by the run's seed; `clients_per_round`
    of them train in each round (the Fed-LT protocol: 20 clients, 8 per round, α = 0.5)."""

    clients: int = Field(20, ge=1)
    alpha: Float = Field(0.5, gt=0)
    """Dirichlet concentration: small α puts most of a class on a few clients."""
    min_client_records: int = Field(1, ge=1)
    """A split that leaves a client with fewer records is redrawn."""
    clients_per_round: int = Field(8, ge=1)
    features: str = ""
    """A safetensors file of encoded features (train_features, train_labels, test_features,
    test_labels), written by `featdiff encode`; clients hold their Dirichlet share of the training
    rows, the server evaluates on the test rows."""
    algorithm: Annotated[
        Literal["fedavg", "fedddpm", "fedddpm_plus", "progressive", "fedavg_head", "creff", "gaussian_stats"],
        BeforeValidator(_current_algorithm_name),
    ] = "fedddpm"
    """fedavg: FedAvg of the denoiser, no correction; fedddpm: τ server steps on the auxiliary set
    every round; fedddpm_plus: QUICK-TEST, then one early-stopped fine-tune, then stop; progressive:
    fedddpm whose auxiliary bank is refreshed from well-scored models. fedavg_head and creff are the
    classifier-only baselines (no denoiser; fedavg_head is DP-FedAvg of the head in a private run),
    gaussian_stats the class Gaussian of the setup's statistics (their Gaussian releases in a
    private run). The strategies: featdiff.federated.strategies. The
    spellings feddpm and feddpm_plus are read as fedddpm and fedddpm_plus."""
    rounds: int = Field(30, ge=1)
    local_steps: int = Field(20, ge=1)
    """E: optimiser steps each sampled client takes per round (constant lr, fresh optimizer)."""
    class_rows: Literal["size", "class_counts"] = "class_counts"
    """How FedAvg weights the class-embedding rows: by client size (plain FedAvg) or, row c, by each
    client's count of class c (featdiff's default, so a tail row is not diluted by non-holders)."""
    warmup_steps: int = Field(400, ge=0)
    """Local denoiser steps of each client before the rounds (non-private); private clients run
    the privacy section's two phases instead."""
    warmup_upload: Literal["model", "features"] = "features"
    """What a client uploads after warm-up: its denoiser, or its share of pseudo-features drawn from it."""
    warmup_from: str = ""
    """A run folder whose finished warm-up (auxiliary set, bytes) this run reuses instead of asking
    the clients again: algorithms compared on one federation share one warm-up. Its saved config
    must agree on everything the warm-up depends on."""
    aux_per_class: int = Field(100, ge=1)
    """Auxiliary-set size per class, split over the holders of the class in proportion to their counts."""
    server_steps: int = Field(20, ge=0)
    """τ: correction steps on the auxiliary set after each aggregation (fedddpm, progressive)."""
    correction: Literal["scored", "fixed"] = "scored"
    """fixed: τ steps every round (FedDDPM as published). scored: round(s·τ) steps with strength
    s = clamp(1 − F_bank / F_model, 0, 1), F the mean per-class Fréchet distance of the bank and of
    fresh samples of the aggregated model to the federation's class statistics: a bank that is no
    better than the model corrects nothing, so the correction cannot pull the model towards worse
    features; and a corrected model that scores worse than the aggregated one on the same draws is
    undone. Private runs correct as `fixed` (their only reference is the auxiliary set itself)."""
    server_lr: Float = Field(2e-4, gt=0)
    server_batch: int = Field(256, ge=1)
    quick_test_holdout: Float = Field(0.2, gt=0, lt=1)
    """Share of the auxiliary set held out for QUICK-TEST's fixed loss (never trained on)."""
    quick_test_threshold: Float = Field(0.01, ge=0)
    """ε of QUICK-TEST: a relative improvement of the held-out loss below it counts as slow."""
    quick_test_patience: int = Field(2, ge=1)
    """P: slow rounds in a row that trigger FedDDPM+'s fine-tune."""
    finetune_max_steps: int = Field(400, ge=1)
    finetune_eval_every: int = Field(25, ge=1)
    finetune_patience: int = Field(3, ge=1)
    """FedDDPM+'s fine-tune stops after this many evaluations without a held-out improvement."""
    refresh_score_ratio: Float = Field(1.0, gt=0)
    """Progressive: class c is refreshed when its candidates' Fréchet distance to the federation's
    class statistics is below this times the bank's class-c rows' (1: strictly closer)."""
    refresh_share: Float = Field(0.25, ge=0, le=1)
    """r: at most this share of a class replaced per refresh (worst-scored non-anchor rows first:
    farthest from the class mean in units of its RMS radius)."""
    anchor_share: Float = Field(0.25, ge=0, le=1)
    """Share of the warm-up auxiliary set that is never replaced."""
    refresh_every: int = Field(2, ge=1)
    refresh_loss_check: bool = False
    """Progressive: also require the sampled clients' fixed-draw loss on their real records to stay
    within `refresh_loss_slack` of its value at the last refresh (one more broadcast of the model
    per refresh; the Fréchet rule alone costs no bytes)."""
    refresh_loss_slack: Float = Field(0.05, ge=0)
    """Progressive with `refresh_loss_check`: the clients' loss may exceed its value at the last refresh by this share."""
    probe_every: int = Field(5, ge=1)
    """Every this many rounds (and at the last), sample `probe_per_class` pseudo-features per class
    and report their Fréchet distance to the test features and a head's accuracy on them."""
    probe_per_class: int = Field(50, ge=2)
    probe_epochs: int = Field(30, ge=1)
    pseudo_per_class: int = Field(500, ge=1)
    """Pseudo-features per class sampled from the final denoiser for the server's classifier."""
    head_rounds: int = Field(10, ge=0)
    """FedAvg rounds of the linear head (the fedavg_head baseline, CReFF, and the refinement of
    the server's classifier; 0 skips the refinement)."""
    head_local_epochs: int = Field(2, ge=1)
    head_lr: Float = Field(1e-3, gt=0)
    private_refine: bool = False
    """A private denoiser run also refines its head by DP-FedAvg of the head (each client's DP-SGD
    with the logit-adjusted loss): the release combined with DP-SGD on the real records. A client's
    budget is then split: the denoiser spends `privacy.release_share`·ε, the head's DP-SGD what is
    left of ε (the tight accountant composes both)."""
    head_loss: Literal["ce", "logit_adjusted"] = "logit_adjusted"
    """Local loss of FedAvg head rounds: plain cross-entropy, or logit-adjusted by the client's own prior."""
    creff_features_per_class: int = Field(100, ge=1)
    creff_match_steps: int = Field(100, ge=1)
    creff_match_lr: Float = Field(0.1, gt=0)
    drop_rate: Float = Field(0.0, ge=0, lt=1)
    """Simulated failures: the share of sampled clients that do not answer a round (seeded)."""
    round_timeout: Annotated[Float, Field(gt=0)] | None = None
    """Seconds the server waits for a round's replies; null waits for every reply."""
    stage_timeout: Annotated[Float, Field(gt=0)] | None = None
    """Seconds the server waits in the setup and the warm-up (slower than a round: every client
    starts, and trains its local denoiser); null waits for every reply."""


class RunConfig(_Section):
    name: str = "run"
    method: str = "ldmlr"
    """One of `featdiff.method_catalog.method_names()`: featdiff's methods and FEATDIFF_METHODS'."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    filter: PseudoFilterConfig = Field(default_factory=PseudoFilterConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    e2e: EndToEndConfig = Field(default_factory=EndToEndConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        names = method_names()
        if method not in names:
            expected = ", ".join(repr(name) for name in names[:-1]) + f" or {names[-1]!r}"
            raise PydanticCustomError("literal_error", "unknown method", {"expected": expected})
        return method

    @model_validator(mode="after")
    def _sections_agree(self) -> RunConfig:
        """Rules over several sections that hold for every method, then the method's own."""
        config_rule(bool(self.name) and "/" not in self.name, "name", f"must be a non-empty name without '/', got {self.name!r}")
        config_rule(not self.encoder.public or self.encoder.checkpoint is not None, "encoder.public", "needs encoder.checkpoint")
        method = method_named(self.method)
        if self.data.source == "features":
            config_rule(
                method.features_only,
                "method",
                f"{self.method!r} needs images and an encoder, which data.source 'features' does not have; use one of "
                f"{_feature_methods()} (or data from images)",
            )
            config_rule(
                self.encoder.checkpoint is None, "encoder.checkpoint", "must be null for data.source 'features' (its features are given)"
            )
            config_rule(
                not self.evaluation.test_time_flip,
                "evaluation.test_time_flip",
                "needs images to mirror, which data.source 'features' does not have; set it false",
            )
        config_rule(
            not (self.evaluation.test_time_flip and self.data.dataset == "digits" and self.data.source != "folder"),
            "evaluation.test_time_flip",
            "mirrors images, and a mirrored digit is another digit (or none); set it false for digits",
        )
        config_rule(
            not self.diffusion.denoiser_from or self.method == "ldmlr",
            "diffusion.denoiser_from",
            f"reuses the denoiser of an ldmlr run, which method {self.method} does not fit; leave it empty",
        )
        if self.finetune.init == "scratch":
            # The pipeline then skips stage 1 and hands the method a random encoder: only a method
            # that trains the encoder itself can start from it.
            config_rule(
                method.trains_encoder,
                "finetune.init",
                f"'scratch' has no starting encoder for method {self.method}, which does not train the encoder; "
                f"use {_encoder_trainers()}, or init: encoder",
            )
            config_rule(self.encoder.checkpoint is None, "encoder.checkpoint", "must be null when finetune.init is 'scratch'")
        if method.rules is not None:
            method.rules(self)
        return self


def _feature_methods() -> str:
    """The methods that run on feature vectors alone, for the message that refuses another."""
    return ", ".join(name for name in method_names() if method_named(name).features_only)


def _encoder_trainers() -> str:
    """The methods that may start from scratch, for the message that refuses it (imports them all)."""
    names = [name for name in method_names() if method_named(name).trains_encoder]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def private_training(config: RunConfig) -> bool:
    """Whether the privacy section asks for private training (a target ε or a fixed σ): what makes
    a federated run private."""
    return config.privacy.epsilon is not None or config.privacy.noise_multiplier is not None


def privacy_rules(config: RunConfig) -> None:
    """The privacy section's rules, for private methods (their `rules`) and private federated runs
    (`check_federated`); a run that never trains privately ignores the section."""
    config_rule(
        config.privacy.split_timestep < config.diffusion.num_steps,
        "privacy.split_timestep",
        f"must be below diffusion.num_steps ({config.diffusion.num_steps}), got {config.privacy.split_timestep}",
    )
    if config.privacy.phase_one_accounting == "per_record":
        config_rule(
            config.privacy.adjacency == "replace_one",
            "privacy.phase_one_accounting",
            "per_record bounds a replaced record only (under add/remove an added record's noisy input has no counterpart): "
            "set privacy.adjacency: replace_one, or phase_one_accounting: dp_promise",
        )
        config_rule(
            config.privacy.accountant == "prv",
            "privacy.phase_one_accounting",
            "per_record needs privacy.accountant: prv (clt is dp-promise's own formula, which assumes the subsampled sum)",
        )


def guidance_rules(config: RunConfig) -> None:
    """For methods that sample a denoiser trained by LDMLR's stage 2 (`ldmlr`, `ldmlr_stale`,
    `ldmlr_refit`): classifier-free guidance mixes in the unconditional model, which only label
    dropout trains there."""
    config_rule(
        config.diffusion.guidance == 1.0 or config.diffusion.label_dropout > 0,
        "diffusion.guidance",
        f"is {config.diffusion.guidance:g}, which needs an unconditional model: set diffusion.label_dropout > 0 (e.g. 0.1), or guidance: 1",
    )


def private_control_rules(config: RunConfig) -> None:
    """`dp_linear` and `dp_gaussian`: a release that shares the budget must leave the counts room."""
    privacy = config.privacy
    if config.method == "dp_linear" and privacy.linear_release != "none":
        config_rule(
            privacy.release_share > privacy.count_share,
            "privacy.release_share",
            f"must exceed privacy.count_share = {privacy.count_share:g} (the counts are part of the release), "
            f"got {privacy.release_share:g}",
        )


def federated_rules(config: RunConfig) -> None:
    """The federated section's rules over several keys, for `featdiff federated` runs only."""
    fed = config.federated
    config_rule(
        fed.clients_per_round <= fed.clients,
        "federated.clients_per_round",
        f"must be <= federated.clients = {fed.clients}, got {fed.clients_per_round}",
    )


def check_federated(config: RunConfig) -> None:
    """Refuse, with the one-line message of any config rule, a config `featdiff federated` cannot
    run: the federated section's rules, and the privacy section's when the clients train
    privately. Call it on the loaded config before the run folder is created."""
    try:
        federated_rules(config)
        if private_training(config):
            privacy_rules(config)
            config_rule(
                config.federated.algorithm != "creff",
                "federated.algorithm",
                "creff has no private version (its clients send class gradients in clear): use fedavg_head, the private "
                "head baseline, or drop privacy.epsilon",
            )
    except PydanticCustomError as error:
        raise UserError(f"config key '{error.context['field']}' {error.message()}") from None


_TYPE_NAMES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "dict_type": "must be a mapping of keys to values",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, shortened to keep the message on one line."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(loc: list[Any]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _section_at(loc: list[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _user_error(error: ValidationError) -> UserError:
    """pydantic's first complaint as one line naming the dotted key (never its multi-line dump)."""
    detail = error.errors(include_url=False)[0]
    loc = list(detail["loc"])
    ctx = detail.get("ctx") or {}
    kind, value = detail["type"], detail.get("input")
    if kind == "config_rule":
        return UserError(f"config key '{_dotted(loc + str(ctx['field']).split('.'))}' {detail['msg']}")
    if kind == "invalid_key":
        where = f" in '{_dotted(loc[:-1])}'" if len(loc) > 1 else ""
        return UserError(f"config keys must be names{where}, got {_show(value)}")
    key = _dotted(loc)
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1])
        valid = f" (valid keys: {', '.join(sorted(section.model_fields))})" if section else ""
        return UserError(f"unknown config key '{key}'{valid}")
    if kind == "literal_error":
        return UserError(f"config key '{key}' must be one of {ctx['expected']}, got {_show(value)}")
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        return UserError(f"config key '{key}' must be {sign} {ctx[name]:g}, got {_show(value)}")
    if kind in _TYPE_NAMES:
        return UserError(f"config key '{key}' {_TYPE_NAMES[kind]}, got {_show(value)}")
    message = " ".join(str(detail["msg"]).split())
    return UserError(f"config key '{key}' is invalid: {message}, got {_show(value)}")


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
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r} (e.g. --set seed=1)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or "parse error"
            raise UserError(f"--set {key.strip()}: value {raw!r} is not valid YAML ({problem})") from None
        parsed.append((key.strip(), value))
    return parsed


def config_from_dict(values: dict, overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    tree = copy.deepcopy(values)  # overrides must not write into the caller's nested dicts
    for key, value in overrides:
        _set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as error:
        raise _user_error(error) from None


def _read_yaml(path: Path) -> Any:
    if path.is_dir():
        raise UserError(f"config path {path} is a directory, not a YAML file (see configs/ for examples)")
    if not path.exists():
        raise UserError(f"config file not found: {path} (see configs/ for examples)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except OSError as error:
        raise UserError(f"config file {path} cannot be read: {error.strerror or error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML: {where}{problem}") from None


def load_config(path: Path, overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    path = Path(path)
    values = _read_yaml(path)
    if values is None:
        raise UserError(f"config file {path} is empty (nothing but comments or null): give at least method and data, as configs/*.yaml do")
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values, got a {type(values).__name__}")
    return config_from_dict(values, overrides)


def config_to_dict(config: RunConfig) -> dict:
    return config.model_dump()


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
