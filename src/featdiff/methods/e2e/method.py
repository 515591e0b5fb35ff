"""`e2e`: train encoder E, classifier G and denoiser ε_θ together (`featdiff.methods.e2e`), with
the same fine-tuning budget as `ce_finetune`, `ldmlr_stale` and `ldmlr_refit`.

The denoiser is first fitted to the starting encoder's features (LDMLR's stage 2), then trained
jointly with the configured strategy; per-epoch diagnostics compare its pseudo-features with the
current real features and are plotted in the run folder. Optionally LDMLR's classifier stage
follows, on pseudo-features of the co-trained denoiser, with the jointly trained G as control.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from featdiff.config import EndToEndConfig, FeatureConfig, FinetuneConfig, RunConfig
from featdiff.data.bundle import DatasetBundle
from featdiff.evaluation.diagnostics import compare, plot_history, plot_two_clouds
from featdiff.evaluation.inference import encode
from featdiff.features import EncodedDataset, FeatureSet, encode_dataset, inference_batch
from featdiff.generation.pseudo import SamplerSettings, build_denoiser, pseudo_counts, schedule_for
from featdiff.methods.e2e.model import EndToEndModel, pseudo_label_distribution, resolve_generation_weight, trained_prior
from featdiff.methods.e2e.steps import EndToEndSettings
from featdiff.methods.e2e.trainer import end_to_end_state, train_end_to_end
from featdiff.methods.stages import (
    MethodContext,
    MethodResult,
    augment_padding,
    diagnostic_counts,
    eval_features,
    evaluate_all,
    retrain_with_pseudo,
    seconds_per_epoch,
    shown_classes,
)
from featdiff.runs import Run, StageOutput
from featdiff.seeding import initialise, named_generator
from featdiff.training.acceleration import accelerated
from featdiff.training.denoiser import denoiser_state, train_denoiser
from featdiff.training.finetune import set_train_mode

AS_TRAINED_STREAM = "e2e/features-as-trained"
"""One stream for the augmented pass over the training images, wherever it is taken (the
diagnostics and the re-balancing stage see the same features)."""


def _train_features(encoder: nn.Module, bundle: DatasetBundle, device: torch.device) -> torch.Tensor:
    """Clean eval-mode features of the training images, for diagnostics."""
    return encode(encoder, bundle.train.images, bundle.mean, bundle.std, batch_size=inference_batch(device), device=device, progress=False)


@torch.no_grad()
def features_as_trained(
    encoder: nn.Module, bundle: DatasetBundle, config: FinetuneConfig, padding: int, generator: torch.Generator, device: torch.device
) -> FeatureSet:
    """One augmented pass over the training images in shuffled batches, with the fine-tuned
    layers' BN in train mode: the features as joint training computed them. Runs on a copy, so
    no running statistic of the encoder moves."""
    trained = copy.deepcopy(encoder)
    set_train_mode(trained, config.trainable)
    augment = bundle.augmenter(padding)
    images = bundle.train.images.to(device)
    order = torch.randperm(len(bundle.train.labels), generator=generator)
    features = torch.empty(len(order), int(encoder.feature_dim))
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        batch = bundle.normalize(augment(images[index.to(device)], generator))
        features[index] = trained.features(batch).float().cpu()
    return FeatureSet(features, bundle.train.labels)


def settings_for(config: RunConfig, e2e_config: EndToEndConfig, train_counts: torch.Tensor | None = None) -> EndToEndSettings:
    """The steps' settings; with `finetune.loss: logit_adjusted`, G's logits are offset by the log
    of the prior it trains under (real counts plus the generation branch's pseudo-labels)."""
    offsets = None
    if config.finetune.loss == "logit_adjusted" and train_counts is not None:
        prior = trained_prior(e2e_config, train_counts, pseudo_label_distribution(train_counts, e2e_config.ge_labels))
        offsets = torch.log(prior.clamp_min(1e-12)).float()
    return EndToEndSettings(config.finetune, e2e_config, config.filter, config.diffusion, schedule_for(config.diffusion), offsets)


def resolved_e2e_config(config: RunConfig, train_counts: torch.Tensor) -> EndToEndConfig:
    """`e2e` with its null defaults filled in: γ_ge from the class counts, and whether the clip
    range follows the encoder from where the encoder starts."""
    e2e = resolve_generation_weight(config.e2e, train_counts)
    if e2e.clip_follows_encoder is None:
        e2e = e2e.model_copy(update={"clip_follows_encoder": config.finetune.init == "scratch"})
    return e2e


def new_end_to_end_model(config: RunConfig, e2e_config: EndToEndConfig, encoder: nn.Module, num_classes: int) -> EndToEndModel:
    """A copy of the encoder with a freshly initialised denoiser, seeded from the run's seed, so
    the run does not depend on whatever drew from the global generator before it."""
    denoiser = initialise(
        build_denoiser(int(encoder.feature_dim), num_classes, config.diffusion), named_generator(config.seed, "e2e/denoiser-init")
    )
    return EndToEndModel(copy.deepcopy(encoder), denoiser, num_classes, e2e_config)


def _pretrain_denoiser(model: EndToEndModel, encoded: EncodedDataset, run: Run, device: torch.device) -> None:
    """Fit ε_θ to the starting encoder's features (LDMLR's stage 2), in the model's scaled space."""
    config = run.config
    steps = config.e2e.denoiser_pretrain_steps
    if steps == 0:
        return
    diffusion = config.diffusion.model_copy(update={"steps": steps})
    scaled = model.standardizer.encode(encoded.train.features.to(device))
    data, draws = (named_generator(config.seed, f"e2e/pretrain-{purpose}", device) for purpose in ("data", "diffusion"))
    state = denoiser_state(model.denoiser, len(scaled), diffusion, data, draws=draws)
    train_denoiser(state, scaled, encoded.train.labels, schedule_for(diffusion), diffusion)
    model.denoiser.load_state_dict(state.ema.module.state_dict())


def e2e_pseudo_features(
    model: EndToEndModel, counts: torch.Tensor, settings: EndToEndSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`counts[c]` pseudo-features of class c as the classifier sees them during training (few-step DDIM)."""
    config = settings.e2e
    labels = torch.arange(len(counts)).repeat_interleave(counts.cpu())
    feature_generator = model.feature_generator(settings.schedule, settings.diffusion.resolved_prediction())
    features = feature_generator.sample(labels, SamplerSettings("ddim", config.ge_sample_steps, config.ge_eta), generator)
    return features.cpu(), labels


def finished_end_to_end_model(run: Run, bundle: DatasetBundle, encoder: nn.Module, device: torch.device) -> EndToEndModel:
    """The jointly trained encoder, classifier and denoiser of a run whose end_to_end stage is done."""
    config = run.config
    e2e_config = resolved_e2e_config(config, bundle.train.class_counts())
    model = new_end_to_end_model(config, e2e_config, encoder, bundle.num_classes).to(device)
    model.load_state_dict(run.load_tensors("end_to_end.safetensors", stage="end_to_end"))
    return model.eval()


def diagnose_as_trained(run: Run, bundle: DatasetBundle, model: EndToEndModel, device: torch.device) -> dict:
    """The co-trained denoiser's pseudo-features against the features joint training computed
    (augmented images, the fine-tuned layers' BN in train mode): the distribution the denoiser
    learned and the classifier saw beside the pseudo-features. The per-epoch diagnostics compare
    with clean eval-mode features instead, which the BN and augmentation shift moves away."""
    config = run.config
    settings = settings_for(config, resolved_e2e_config(config, bundle.train.class_counts()))
    real = features_as_trained(
        model.encoder, bundle, config.finetune, augment_padding(config), named_generator(config.seed, AS_TRAINED_STREAM), device
    )
    generator = named_generator(config.seed, "e2e/diagnostics", device)
    pseudo, pseudo_labels = e2e_pseudo_features(model, diagnostic_counts(bundle.num_classes), settings, generator)
    return compare(real.features, real.labels, pseudo, pseudo_labels, bundle.num_classes)


def stage_end_to_end(context: MethodContext, starting: EncodedDataset) -> tuple[EndToEndModel, dict]:
    """The jointly trained model, and the stage's info: per-epoch `history` and `diagnostics`."""
    run, config, bundle, device = context.run, context.config, context.bundle, context.device
    e2e_config = resolved_e2e_config(config, context.train_counts)
    model = new_end_to_end_model(config, e2e_config, context.encoder, bundle.num_classes).to(device)

    def train() -> StageOutput:
        settings = settings_for(config, e2e_config, context.train_counts)
        state = end_to_end_state(model, len(bundle.train.labels), settings, named_generator(config.seed, "e2e/data"))
        diagnostics_generator = state.generators["diagnostics"] = named_generator(config.seed, "e2e/diagnostics", device)
        resume = run.load_checkpoint("end_to_end")
        if resume is None:
            model.initialise_statistics(
                starting.train.features.to(device), starting.train.labels.to(device), context.train_counts, e2e_config
            )
            _pretrain_denoiser(model, starting, run, device)
        else:
            state.load_state_dict(resume)
        counts = diagnostic_counts(bundle.num_classes)

        def diagnose(epoch: int, logged: dict[str, float]) -> None:
            real = _train_features(model.encoder, bundle, device)
            pseudo, pseudo_labels = e2e_pseudo_features(model, counts, settings, diagnostics_generator)
            report = compare(real, bundle.train.labels, pseudo, pseudo_labels, bundle.num_classes)
            run.log("end_to_end", **logged, diagnostics=report)
            state.extra["diagnostics"] = [*state.extra.get("diagnostics", []), {"epoch": epoch, **report}]

        with accelerated(model.encoder, config.compute, device):
            history = train_end_to_end(
                state,
                bundle.train.images,
                bundle.train.labels,
                settings,
                bundle.augmenter(augment_padding(config)),
                bundle.normalize,
                checkpoint=lambda saved: run.save_checkpoint("end_to_end", saved),
                on_epoch_end=diagnose,
            )
        diagnostics = state.extra.get("diagnostics", [])
        if diagnostics:
            plot_history(diagnostics, run.path("diagnostics.png"))
        real = _train_features(model.encoder, bundle, device)
        pseudo, pseudo_labels = e2e_pseudo_features(model, counts, settings, diagnostics_generator)
        plot_two_clouds(real, bundle.train.labels, pseudo, pseudo_labels, shown_classes(bundle), run.path("two_clouds.png"))
        return model.state_dict(), {"history": history, "diagnostics": diagnostics}

    weights, info = run.stage("end_to_end", train)
    model.load_state_dict(weights)
    return model.eval(), info


def run(context: MethodContext) -> MethodResult:
    """Joint training, then optionally LDMLR's classifier stage on the co-trained denoiser's
    pseudo-features, with the jointly trained classifier as its control."""
    run_folder, config, bundle, device = context.run, context.config, context.bundle, context.device
    # The starting statistics and the denoiser's pre-fit must see features as the trainer computes
    # them (encoder.features), not LDMLR's extraction path (no stem ReLU) that features.style may pick.
    starting = encode_dataset(context.encoder, bundle, FeatureConfig(style="eval"), config.seed, device)
    with run_folder.timed("end_to_end_s"):
        model, info = stage_end_to_end(context, starting)
    tuned_encoded = eval_features(context, model.encoder)
    e2e_config = resolved_e2e_config(config, context.train_counts)
    prior = trained_prior(e2e_config, context.train_counts, model.pseudo_label_probs)
    if config.finetune.loss == "logit_adjusted":  # the offsets took that prior out of G's logits
        prior = torch.full_like(prior, 1.0 / len(prior))
    extra = {
        "history": info["history"],
        "diagnostics": info["diagnostics"],
        "gamma_ge": e2e_config.gamma_ge,
        "seconds_per_epoch": seconds_per_epoch(info["history"]),
    }
    joint = evaluate_all(model.encoder.fc, tuned_encoded, prior, context)
    if not config.e2e.rebalance_classifier:
        return MethodResult(joint, extra, {})
    counts = pseudo_counts(context.train_counts, config.generation)
    pseudo_x, pseudo_y = e2e_pseudo_features(
        model, counts, settings_for(config, e2e_config), named_generator(config.seed, "e2e/generation", device)
    )
    if config.e2e.rebalance_features == "as_trained":
        generator = named_generator(config.seed, AS_TRAINED_STREAM)
        as_trained = features_as_trained(model.encoder, bundle, config.finetune, augment_padding(config), generator, device)
        tuned_encoded = EncodedDataset(train=as_trained, test=tuned_encoded.test, train_holdout=tuned_encoded.train_holdout)
    result, retrained = retrain_with_pseudo(context, "classifier", model.encoder, tuned_encoded, pseudo_x, pseudo_y)
    return MethodResult(result, extra | retrained, {"e2e_joint_classifier": joint})
