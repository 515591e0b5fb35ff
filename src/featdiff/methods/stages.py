"""Stages that several methods share: evaluation, classifier retraining, denoiser fitting with
pseudo-feature generation, and CE fine-tuning of the encoder.

Each stage stores its output in the run folder and marks itself done (`Run.stage`), so a resumed
run skips it, and continues an unfinished one from its last checkpoint (`Run.resume_into`). Every
random draw comes from a stream named after the stage and its purpose (`featdiff.seeding`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featdiff.config import ClassifierConfig, FeatureConfig, RunConfig
from featdiff.data.bundle import DatasetBundle, FeatureBundle, load_dataset
from featdiff.distributed import world
from featdiff.evaluation.diagnostics import compare, plot_two_clouds
from featdiff.evaluation.metrics import summarize
from featdiff.evaluation.protocol import TestParts, blended_summaries, part_summaries
from featdiff.features import EncodedDataset, FeatureSet, encode_dataset
from featdiff.generation.filter import band_weights
from featdiff.generation.gaussian import ClassGaussian
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, fit_generator, labels_for, pseudo_counts
from featdiff.generation.stream import write_fill
from featdiff.generation.transfer import class_temperatures, fitted_transfer
from featdiff.privacy.controls import ControlPlan, release_counts, release_moments
from featdiff.privacy.dp_promise import clip_to_norm
from featdiff.privacy.noise import private_noise
from featdiff.runs import Run, StageOutput
from featdiff.seeding import named_generator, reset_parameters
from featdiff.statistics import ClassGeometry, SufficientStatistics, band_fractions
from featdiff.training.acceleration import accelerated
from featdiff.training.classifier import (
    SelectedRows,
    StackedRows,
    WeightedFeatures,
    class_mass,
    classifier_head,
    classifier_state,
    train_classifier,
    trained_prior,
)
from featdiff.training.finetune import finetune_state, train_finetune


@dataclass
class MethodContext:
    """What every method starts from: the run, its data, the stage-1 encoder (random weights
    when a method starts from scratch) with its features, and the device."""

    run: Run
    bundle: DatasetBundle | FeatureBundle
    """The dataset: images and their constants, or (`data.source: features`) only classes and counts."""
    encoder: nn.Module
    encoded: EncodedDataset
    device: torch.device
    controls: dict
    """Controls the pipeline evaluated before the method ran (`ce`, the encoder as it is)."""
    parts: TestParts
    """The test set's validation and report parts (`featdiff.evaluation.protocol`)."""
    encoder_logits: torch.Tensor | None = None
    """The encoder's own head's test logits, which every later classifier's `blended` summary
    mixes in (None when there is no trained head to blend with, and in private runs: the blend
    is no part of what a release's guarantee covers)."""

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def train_counts(self) -> torch.Tensor:
        return self.bundle.train_counts

    @property
    def real_prior(self) -> torch.Tensor:
        counts = self.train_counts.double()
        return counts / counts.sum()


@dataclass
class MethodResult:
    """A method's summary (the accuracies it reports), what it adds to results.json, and the
    controls it evaluated on the way."""

    summary: dict
    extra: dict
    controls: dict


def logits_of(classifier: nn.Module, features: FeatureSet) -> torch.Tensor:
    device = next(classifier.parameters()).device
    with torch.inference_mode():
        return classifier(features.features.to(device)).cpu()


def evaluate_all(
    classifier: nn.Module,
    encoded: EncodedDataset,
    prior: torch.Tensor,
    context: MethodContext,
    *,
    adjust_counts: torch.Tensor | None = None,
) -> dict:
    """The full test set's summary (what the tables before the validation protocol report), its
    `validation` and `report` parts', `tuned` (τ chosen on the validation part), `blended` (mixed
    with the encoder's head, when the context holds its logits) and the train holdout's when the
    run holds one out. `prior` is the prior the classifier was trained
    under; `adjust_counts` the counts the tuned adjustment divides by (the true training counts
    unless a private head gives its released ones)."""
    index_groups, counts = context.bundle.index_groups, context.train_counts
    logits = logits_of(classifier, encoded.test)
    result = summarize(logits, encoded.test.labels, counts, prior=prior, index_groups=index_groups)
    result |= part_summaries(
        logits, encoded.test.labels, context.parts, counts, prior=prior, index_groups=index_groups, adjust_counts=adjust_counts
    )
    if context.encoder_logits is not None:
        result["blended"] = blended_summaries(
            logits, context.encoder_logits, encoded.test.labels, context.parts, counts, index_groups=index_groups
        )
    if encoded.train_holdout is not None:
        holdout = encoded.train_holdout
        result["train_holdout"] = summarize(logits_of(classifier, holdout), holdout.labels, counts, prior=prior, index_groups=index_groups)
    return result


@dataclass(frozen=True)
class TrainedHead:
    """A retrained classifier and the prior it predicts under (for the post-hoc adjusted scores)."""

    module: nn.Module
    prior: torch.Tensor


def retrain_classifier(
    context: MethodContext,
    stage: str,
    encoder: nn.Module,
    data: WeightedFeatures,
    *,
    random_init: bool = False,
    recipe: ClassifierConfig | None = None,
) -> TrainedHead:
    """LDMLR's stage-3 recipe (`recipe`, default the run's `classifier` section: its loss, its
    feature normalisation) on `data`, from the encoder's fc (or a seeded random one, with
    `classifier.init: random` or `random_init`)."""
    run, config = context.run, context.config
    recipe = config.classifier if recipe is None else recipe
    fc = copy.deepcopy(encoder.fc).to(context.device)
    if random_init or recipe.init == "random":
        reset_parameters(fc, named_generator(config.seed, f"{stage}/init"))
    classifier = classifier_head(fc, recipe)

    def train() -> StageOutput:
        state = classifier_state(classifier, len(data), recipe, named_generator(config.seed, f"{stage}/data"))
        run.resume_into(stage, state)
        with run.timed(f"{stage}_s"):
            history = train_classifier(state, data, recipe, checkpoint=lambda saved: run.save_checkpoint(stage, saved), desc=stage)
        run.log(stage, final_loss=history[-1], epochs=len(history))
        return classifier.state_dict(), {}

    weights, _ = run.stage(stage, train)
    classifier.load_state_dict(weights)
    return TrainedHead(classifier, trained_prior(recipe, class_mass(data, context.bundle.num_classes)))


def real_features(encoded: EncodedDataset) -> WeightedFeatures:
    train = encoded.train
    return WeightedFeatures(train.features, train.labels, torch.ones(len(train.labels)))


def fit_feature_generator(context: MethodContext, features: FeatureSet) -> FeatureGenerator:
    """LDMLR's stage 2 (`featdiff.generation.pseudo.fit_generator`), resumable and logged in the run."""
    run, config = context.run, context.config
    return fit_generator(
        features.features,
        features.labels,
        context.bundle.num_classes,
        config.diffusion,
        seed=config.seed,
        device=context.device,
        before_training=lambda state: run.resume_into("denoiser", state),
        checkpoint=lambda saved: run.save_checkpoint("denoiser", saved),
        log=lambda step, loss: run.log("denoiser", step=step, loss=loss),
    )


def generation_temperatures(context: MethodContext) -> torch.Tensor | None:
    """Per-class sampling temperatures of `generation` (None when every class's is 1)."""
    generation = context.config.generation
    if generation.temperature == 1.0 and generation.temperature_power == 0.0:
        return None
    return class_temperatures(context.train_counts, generation.temperature, generation.temperature_power)


FILL_CHUNK = 65_536
"""Pseudo-features sampled, post-processed and written at a time: a multiple of the sampler's
1,024-row chunks, so the diffusion draws are exactly those of one call over every label."""


def write_context_fill(
    context: MethodContext,
    features: FeatureSet,
    counts: torch.Tensor,
    draw: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    stream: str,
    path: Path,
) -> None:
    """counts[c] pseudo-features of every class c, in class order, streamed to `path`
    (`featdiff.generation.stream.write_fill`, `FILL_CHUNK` at a time): `draw(labels, temperatures)`
    samples a chunk, then `generation.transfer` (from `features`, the generator's own training
    set, drawing from the stream `<stream>/transfer`) applies to it."""
    config = context.config
    temperatures = generation_temperatures(context)
    transfer_stream = named_generator(config.seed, f"{stream}/transfer")
    transfer = fitted_transfer(config.generation, features.features, features.labels, context.bundle.num_classes)

    def drawn(part: torch.Tensor) -> torch.Tensor:
        pseudo = draw(part, None if temperatures is None else temperatures[part]).cpu()
        return pseudo if transfer is None else transfer(pseudo, part, transfer_stream)

    write_fill(path, labels_for(counts), features.features.shape[1], drawn, chunk=FILL_CHUNK)


def stage_denoiser(context: MethodContext, features: FeatureSet) -> FeatureGenerator:
    """LDMLR's stage 2 as a stage of its own (`denoiser.safetensors`): the denoiser fitted to
    `features`, or the one of the finished run `diffusion.denoiser_from` names (its config
    agrees on everything the denoiser depends on: `featdiff.methods.ldmlr.preflight`)."""
    run, config = context.run, context.config
    source = config.diffusion.denoiser_from

    def fit() -> StageOutput:
        if source:
            return Run.open(Path(source)).load_tensors("denoiser.safetensors", stage="denoiser"), {"from": source}
        with run.timed("denoiser_s"):
            return fit_feature_generator(context, features).tensors(), {}

    tensors, _ = run.stage("denoiser", fit, file="denoiser.safetensors")
    dim, num_classes = features.features.shape[1], context.bundle.num_classes
    return FeatureGenerator.from_tensors(tensors, config.diffusion, dim, num_classes, context.device)


def stage_pseudo_features(context: MethodContext, features: FeatureSet, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoiser of `features` (`stage_denoiser`), sampled for counts[c] pseudo-features of
    class c with the sampling and transfer knobs, streamed to `pseudo_features.safetensors` and
    memory-mapped from it. Under torchrun every rank samples its share of the classes
    (`FeatureGenerator.generate`) and the fill is gathered in memory."""
    run, config = context.run, context.config
    sampler = SamplerSettings.of(config.diffusion)

    if world().parallel:

        def fit_and_sample() -> StageOutput:
            generator = stage_denoiser(context, features)
            with run.timed("generation_s"):
                stream = named_generator(config.seed, "generation/sampling", context.device)
                pseudo, labels = generator.generate(counts, sampler, stream, temperatures=generation_temperatures(context))
                transfer = fitted_transfer(config.generation, features.features, features.labels, context.bundle.num_classes)
                if transfer is not None:
                    pseudo = transfer(pseudo, labels, named_generator(config.seed, "generation/transfer"))
            return {"features": pseudo, "labels": labels}, {}

        stored, _ = run.stage("generation", fit_and_sample, file="pseudo_features.safetensors")
        return stored["features"], stored["labels"]

    def sample_into(path: Path) -> dict:
        generator = stage_denoiser(context, features)
        with run.timed("generation_s"):
            stream = named_generator(config.seed, "generation/sampling", context.device)
            write_context_fill(
                context,
                features,
                counts,
                lambda labels, temperature: generator.sample(labels, sampler, stream, progress=True, temperature=temperature),
                "generation",
                path,
            )
        return {}

    stored, _ = run.streamed_stage("generation", sample_into, file="pseudo_features.safetensors")
    return stored["features"], stored["labels"]


def stage_gaussian_pseudo_features(
    context: MethodContext, features: FeatureSet, counts: torch.Tensor, *, stage: str = "gaussian_generation"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The class-Gaussian generator (`generation.shrinkage`) fitted to `features`, sampled with the
    same counts, temperatures and transfer as the diffusion generator, streamed to its file and
    memory-mapped from it."""
    run, config = context.run, context.config

    def sample_into(path: Path) -> dict:
        with run.timed(f"{stage}_s"):
            generation = config.generation
            gaussian = ClassGaussian.fitted_to(
                features.features,
                features.labels,
                context.bundle.num_classes,
                shrinkage=generation.shrinkage,
                covariance=generation.covariance,
            )
            stream = named_generator(config.seed, f"{stage}/sampling")
            write_context_fill(
                context, features, counts, lambda labels, temperature: gaussian.sample(labels, stream, temperature), stage, path
            )
        return {}

    stored, _ = run.streamed_stage(stage, sample_into, file=f"{stage}.safetensors")
    return stored["features"], stored["labels"]


def retrain_with_pseudo(
    context: MethodContext,
    stage: str,
    encoder: nn.Module,
    encoded: EncodedDataset,
    pseudo_features: torch.Tensor,
    pseudo_labels: torch.Tensor,
) -> tuple[dict, dict]:
    """Retrain the classifier on real (unless `generation.include_real` is false) plus (optionally
    AID/OOD-filtered, weighted) pseudo-features.

    Logit adjustment uses the prior of what the classifier was trained on: real counts plus the
    pseudo-features' total weight per class. Returns the summary and what to add to results.json.
    """
    config = context.config
    num_classes = context.bundle.num_classes
    weights = torch.full((len(pseudo_labels),), config.generation.pseudo_weight)
    extra: dict = {"pseudo_counts": torch.bincount(pseudo_labels, minlength=num_classes).tolist()}
    if config.filter.enabled:
        geometry = ClassGeometry.of(encoded.train.features, encoded.train.labels, num_classes, config.filter.radius)
        multipliers, band = band_weights(pseudo_features, pseudo_labels, geometry, config.filter)
        weights = weights * multipliers
        extra["filter_bands"] = band_fractions(band)
    kept = weights > 0
    if not bool(kept.all()):  # the kept rows are read from the fill batch by batch, not copied out of it
        rows = torch.nonzero(kept).flatten()
        pseudo_features, pseudo_labels, weights = SelectedRows(pseudo_features, rows), pseudo_labels[rows], weights[rows]
    if config.generation.include_real:
        real = encoded.train
        combined = WeightedFeatures(
            StackedRows(real.features, pseudo_features),
            torch.cat([real.labels, pseudo_labels]),
            torch.cat([torch.ones(len(real.labels)), weights]),
        )
    else:
        combined = WeightedFeatures(pseudo_features, pseudo_labels, weights)
    head = retrain_classifier(context, stage, encoder, combined)
    return evaluate_all(head.module, encoded, head.prior, context), extra


def augment_padding(config: RunConfig) -> int:
    padding = config.finetune.augment_padding
    return config.encoder.augment_padding if padding is None else padding


def stage_finetune(context: MethodContext) -> tuple[nn.Module, list[dict]]:
    """A CE-fine-tuned copy of the encoder (shared by ce_finetune, ldmlr_stale and ldmlr_refit)."""
    run, config, bundle, device = context.run, context.config, context.bundle, context.device
    tuned = copy.deepcopy(context.encoder).to(device)

    def finetune() -> StageOutput:
        state = finetune_state(tuned, len(bundle.train.labels), config.finetune, named_generator(config.seed, "finetune/data"))
        run.resume_into("finetune", state)
        with run.timed("finetune_s"), accelerated(tuned, config.compute, device):
            history = train_finetune(
                state,
                bundle.train.images,
                bundle.train.labels,
                config.finetune,
                bundle.augmenter(augment_padding(config)),
                bundle.normalize,
                checkpoint=lambda saved: run.save_checkpoint("finetune", saved),
                on_epoch_end=lambda epoch, logged: run.log("finetune", **logged),
            )
        return tuned.state_dict(), {"history": history}

    weights, info = run.stage("finetune", finetune)
    tuned.load_state_dict(weights)
    return tuned.eval(), info["history"]


def fc_retrain_control(context: MethodContext) -> dict:
    """The classifier retrained on real features only, with the run's classifier recipe: the
    control of frozen-encoder methods."""
    head = retrain_classifier(context, "fc_retrain", context.encoder, real_features(context.encoded))
    return evaluate_all(head.module, context.encoded, head.prior, context)


CHEAP_HEADS = {
    "fc_retrain_la": {"loss": "logit_adjusted", "loss_tau": 1.0, "normalize": False},
    "fc_retrain_normalized": {"loss": "ce", "normalize": True},
}
"""The cheap discriminative controls every frozen-encoder run reports beside `ce` (whose tuned
row is post-hoc logit adjustment with τ chosen on validation) and `fc_retrain`: the head retrained
on real features with the logit-adjusted loss, and on L2-normalised features."""


def cheap_controls(context: MethodContext) -> dict:
    """`fc_retrain` (the run's recipe) and the heads of `CHEAP_HEADS`, all on real features only;
    none with `evaluation.controls: false`."""
    if not context.config.evaluation.controls:
        return {}
    controls = {"fc_retrain": fc_retrain_control(context)}
    data = real_features(context.encoded)
    for name, change in CHEAP_HEADS.items():
        head = retrain_classifier(context, name, context.encoder, data, recipe=context.config.classifier.model_copy(update=change))
        controls[name] = evaluate_all(head.module, context.encoded, head.prior, context)
    return controls


def eval_features(context: MethodContext, encoder: nn.Module) -> EncodedDataset:
    """Clean eval-mode features of every split, as the test set meets the encoder."""
    config = context.config
    return encode_dataset(
        encoder, context.bundle, FeatureConfig(style="eval"), config.seed, context.device, test_time_flip=config.evaluation.test_time_flip
    )


def finetuned_control(context: MethodContext) -> tuple[nn.Module, dict, dict]:
    """The CE-fine-tuned encoder, its summary (the `ce_finetune` control) and its results fields."""
    tuned, history = stage_finetune(context)
    prior = context.real_prior
    if context.config.finetune.loss == "logit_adjusted":  # the loss took the real prior out of its logits
        prior = torch.full_like(prior, 1.0 / len(prior))
    summary = evaluate_all(tuned.fc, eval_features(context, tuned), prior, context)
    return tuned, summary, {"history": history, "seconds_per_epoch": seconds_per_epoch(history)}


def seconds_per_epoch(history: list[dict]) -> float:
    return sum(entry["epoch_s"] for entry in history) / len(history)


DIAGNOSTIC_SAMPLES_PER_CLASS = 200


def diagnostic_counts(num_classes: int) -> torch.Tensor:
    return torch.full((num_classes,), DIAGNOSTIC_SAMPLES_PER_CLASS)


def shown_classes(bundle: DatasetBundle) -> list[int]:
    """The head class and the two rarest: where stale pseudo-features matter most."""
    order = torch.argsort(bundle.train.class_counts(), descending=True).tolist()
    return [order[0], order[-2], order[-1]]


def ldmlr_after_finetune(context: MethodContext, *, refit: bool) -> MethodResult:
    """Fine-tune E with CE, then LDMLR's stages 2+3 on the tuned encoder's features, the denoiser
    fitted to the starting encoder's features (stale) or to the tuned one's (refit)."""
    run, config, bundle = context.run, context.config, context.bundle
    tuned, finetuned, extra = finetuned_control(context)
    tuned_encoded = encode_dataset(
        tuned, bundle, config.features, config.seed, context.device, test_time_flip=config.evaluation.test_time_flip
    )
    counts = pseudo_counts(context.train_counts, config.generation)
    source = tuned_encoded if refit else context.encoded
    pseudo_x, pseudo_y = stage_pseudo_features(context, source.train, counts)
    # Compared with real features extracted as the denoiser's training features were (features.style).
    real = tuned_encoded.train
    report = compare(real.features, real.labels, pseudo_x, pseudo_y, bundle.num_classes)
    plot_two_clouds(real.features, real.labels, pseudo_x, pseudo_y, shown_classes(bundle), run.path("two_clouds.png"))
    summary, retrained = retrain_with_pseudo(context, "classifier", tuned, tuned_encoded, pseudo_x, pseudo_y)
    extra |= retrained | {"diagnostics": [{"epoch": config.finetune.epochs, **report}]}
    return MethodResult(summary, extra, {"ce_finetune": finetuned})


def dataset_size(config: RunConfig) -> int:
    """N, the number of training records, from the data alone (a private method's preflight)."""
    if config.data.source == "features":
        from featdiff.data.feature_file import load_feature_file

        return len(load_feature_file(config.data.features).train_labels)
    return len(load_dataset(config.data, seed=config.seed).train.labels)


def stage_private_release(context: MethodContext, plan: ControlPlan, stream: str) -> SufficientStatistics:
    """The released class counts, and class sums and outer products when the plan releases them,
    of the training features clipped to norm R: a stage of its own (`dp_release.safetensors`),
    its noise from the private generators of `<stream>/release` (`featdiff.privacy.noise`)."""
    run, config = context.run, context.config
    privacy, train = config.privacy, context.encoded.train

    def release() -> StageOutput:
        noise = private_noise(config.seed, f"{stream}/release", reproducible=privacy.reproducible_noise)
        counts = release_counts(train.labels, context.bundle.num_classes, plan, noise.gaussian)
        if not plan.releases_moments(privacy):
            return {"counts": counts}, {}
        records = clip_to_norm(train.features.double(), privacy.norm_bound)
        return release_moments(records, train.labels, counts, plan, noise.gaussian).as_dict(), {}

    stored, _ = run.stage("dp_release", release, file="dp_release.safetensors")
    if "sums" not in stored:
        dim = train.features.shape[1]
        zeros = torch.zeros(len(stored["counts"]), dim, dtype=torch.float64)
        return SufficientStatistics(stored["counts"], zeros, zeros[:, :, None] * zeros[:, None, :])
    return SufficientStatistics.from_dict(stored)
