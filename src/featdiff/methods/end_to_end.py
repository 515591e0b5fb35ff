"""Methods that move the encoder, all with the same fine-tuning budget (`finetune`):

- `ce_finetune`: fine-tune E and G with cross-entropy (the control).
- `ldmlr_stale`: fit the denoiser on the starting encoder's features, fine-tune E with CE, then
  retrain G on the new real features plus pseudo-features of the old denoiser (LDMLR after the
  encoder moved: the 'two clouds' case).
- `ldmlr_refit`: fine-tune E with CE, refit the denoiser on the new features, retrain G.
- `e2e`: pre-fit the denoiser on the starting features, then train E, G and ε_θ jointly with the
  configured strategy (featdiff.e2e).

Each run reports diagnostics of its pseudo-features against the current real features, and
plots them in the run folder.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch
from safetensors.torch import load_file
from torch import nn

from featdiff.config import EndToEndConfig, FeatureConfig, FinetuneConfig, RunConfig
from featdiff.data.bundle import DatasetBundle
from featdiff.diffusion.sampling import sample_features
from featdiff.e2e.diagnostics import compare, plot_history, plot_two_clouds
from featdiff.e2e.model import EndToEndModel, resolve_generation_weight, trained_prior
from featdiff.e2e.trainer import EndToEndSettings, train_end_to_end
from featdiff.evaluation.inference import encode
from featdiff.features import EncodedDataset, FeatureSet, encode_dataset, inference_batch
from featdiff.methods import ldmlr
from featdiff.runs import Run
from featdiff.stages import STAGE_SEEDS, evaluate_all, retrain_with_pseudo, stage_generator, stage_pseudo_features
from featdiff.training.acceleration import accelerated
from featdiff.training.denoiser import train_denoiser
from featdiff.training.finetune import set_train_mode, train_finetune

FINETUNE_METHODS = ("ce_finetune", "ldmlr_stale", "ldmlr_refit", "e2e")
DIAGNOSTIC_SAMPLES_PER_CLASS = 200


def _padding(run: Run) -> int:
    padding = run.config.finetune.augment_padding
    return run.config.encoder.augment_padding if padding is None else padding


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


def stage_finetune(run: Run, bundle: DatasetBundle, encoder: nn.Module, device: torch.device) -> tuple[nn.Module, list[dict]]:
    """A CE-fine-tuned copy of the encoder (shared by ce_finetune, ldmlr_stale and ldmlr_refit)."""
    config = run.config
    tuned = copy.deepcopy(encoder).to(device)
    if run.stage_done("finetune"):
        tuned.load_state_dict(load_file(run.path("finetune.safetensors")))
        return tuned.eval(), run.stage_info("finetune")["history"]
    with accelerated(tuned, config.compute, device):
        history = train_finetune(
            tuned,
            bundle.train.images,
            bundle.train.labels,
            config.finetune,
            bundle.augmenter(_padding(run)),
            bundle.normalize,
            stage_generator(config.seed, "finetune"),
            resume=run.load_checkpoint("finetune"),
            checkpoint=lambda state: run.save_checkpoint("finetune", state),
            on_epoch_end=lambda epoch, logged: run.log("finetune", **logged),
        )
    run.save_tensors("finetune.safetensors", tuned.state_dict())
    run.mark_done("finetune", history=history)
    return tuned.eval(), history


def _pretrain_denoiser(model: EndToEndModel, encoded: EncodedDataset, run: Run, device: torch.device) -> None:
    """Fit ε_θ to the starting encoder's features (LDMLR's stage 2), in the model's scaled space."""
    config = run.config
    steps = config.e2e.denoiser_pretrain_steps
    if steps == 0:
        return
    diffusion = dataclasses.replace(config.diffusion, steps=steps)
    scaled = model.standardizer.encode(encoded.train.features.to(device))
    torch.manual_seed(config.seed * 1000 + STAGE_SEEDS["denoiser"])
    ema = train_denoiser(
        model.denoiser,
        scaled,
        encoded.train.labels,
        ldmlr.schedule_for(diffusion),
        diffusion,
        stage_generator(config.seed, "denoiser", device),
    )
    model.denoiser.load_state_dict(ema.module.state_dict())


def e2e_pseudo_features(
    model: EndToEndModel, counts: torch.Tensor, run: Run, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`counts[c]` pseudo-features of class c as the classifier sees them during training (few-step DDIM)."""
    config = run.config.e2e
    labels = torch.arange(len(counts)).repeat_interleave(counts.cpu()).to(model.feature_floor.device)
    scaled = sample_features(
        model.denoiser,
        labels,
        model.standardizer.mean.numel(),
        ldmlr.schedule_for(run.config.diffusion),
        steps=config.ge_sample_steps,
        eta=config.ge_eta,
        clip=(model.clip_low, model.clip_high),
        generator=generator,
        progress=False,
    )
    return model.standardizer.decode(scaled).cpu(), labels.cpu()


def resolved_e2e_config(config: RunConfig, train_counts: torch.Tensor) -> EndToEndConfig:
    """`e2e` with its null defaults filled in: γ_ge from the class counts, and whether the clip
    range follows the encoder from where the encoder starts."""
    e2e = resolve_generation_weight(config.e2e, train_counts)
    if e2e.clip_follows_encoder is None:
        e2e = dataclasses.replace(e2e, clip_follows_encoder=config.finetune.init == "scratch")
    return e2e


def new_end_to_end_model(config: RunConfig, e2e_config: EndToEndConfig, encoder: nn.Module, num_classes: int) -> EndToEndModel:
    """A copy of the encoder with a freshly initialised denoiser, seeded from the run's seed, so
    the run does not depend on whatever drew from the global generator before it."""
    torch.manual_seed(config.seed * 1000 + STAGE_SEEDS["denoiser"])
    denoiser = ldmlr.build_denoiser(int(encoder.feature_dim), num_classes, config.diffusion)
    return EndToEndModel(copy.deepcopy(encoder), denoiser, num_classes, e2e_config)


def finished_end_to_end_model(run: Run, bundle: DatasetBundle, encoder: nn.Module, device: torch.device) -> EndToEndModel:
    """The jointly trained encoder, classifier and denoiser of a run whose end_to_end stage is done."""
    config = run.config
    e2e_config = resolved_e2e_config(config, bundle.train.class_counts())
    model = new_end_to_end_model(config, e2e_config, encoder, bundle.num_classes).to(device)
    model.load_state_dict(load_file(run.path("end_to_end.safetensors")))
    return model.eval()


def diagnose_as_trained(run: Run, bundle: DatasetBundle, model: EndToEndModel, device: torch.device) -> dict:
    """The co-trained denoiser's pseudo-features against the features joint training computed
    (augmented images, the fine-tuned layers' BN in train mode): the distribution the denoiser
    learned and the classifier saw beside the pseudo-features. The per-epoch diagnostics compare
    with clean eval-mode features instead, which the BN and augmentation shift moves away."""
    config = run.config
    real = features_as_trained(model.encoder, bundle, config.finetune, _padding(run), stage_generator(config.seed, "features"), device)
    generator = stage_generator(config.seed, "diagnostics", device)
    pseudo, pseudo_labels = e2e_pseudo_features(model, _diagnostic_counts(bundle), run, generator)
    return compare(real.features, real.labels, pseudo, pseudo_labels, bundle.num_classes)


def stage_end_to_end(
    run: Run, bundle: DatasetBundle, encoder: nn.Module, encoded: EncodedDataset, device: torch.device
) -> tuple[EndToEndModel, list[dict]]:
    if run.stage_done("end_to_end"):
        return finished_end_to_end_model(run, bundle, encoder, device), run.stage_info("end_to_end")["history"]
    config = run.config
    e2e_config = resolved_e2e_config(config, bundle.train.class_counts())
    model = new_end_to_end_model(config, e2e_config, encoder, bundle.num_classes).to(device)
    resume = run.load_checkpoint("end_to_end")
    if resume is None:
        model.initialise_statistics(
            encoded.train.features.to(device), encoded.train.labels.to(device), bundle.train.class_counts(), e2e_config
        )
        _pretrain_denoiser(model, encoded, run, device)
    diagnostics_generator = stage_generator(config.seed, "diagnostics", device)

    def diagnose(epoch: int, logged: dict[str, float]) -> None:
        real = _train_features(model.encoder, bundle, device)
        pseudo, pseudo_labels = e2e_pseudo_features(model, _diagnostic_counts(bundle), run, diagnostics_generator)
        report = compare(real, bundle.train.labels, pseudo, pseudo_labels, bundle.num_classes)
        run.log("end_to_end", **logged, diagnostics=report)
        diagnostics.append({"epoch": epoch, **report})

    diagnostics: list[dict] = []
    with accelerated(model.encoder, config.compute, device):
        history = train_end_to_end(
            model,
            bundle.train.images,
            bundle.train.labels,
            EndToEndSettings(config.finetune, e2e_config, config.filter),
            ldmlr.schedule_for(config.diffusion),
            bundle.augmenter(_padding(run)),
            bundle.normalize,
            stage_generator(config.seed, "end_to_end"),
            resume=resume,
            checkpoint=lambda state: run.save_checkpoint("end_to_end", state),
            on_epoch_end=diagnose,
        )
    if diagnostics:
        plot_history(diagnostics, run.path("diagnostics.png"))
    real = _train_features(model.encoder, bundle, device)
    pseudo, pseudo_labels = e2e_pseudo_features(model, _diagnostic_counts(bundle), run, diagnostics_generator)
    plot_two_clouds(real, bundle.train.labels, pseudo, pseudo_labels, _shown_classes(bundle), run.path("two_clouds.png"))
    run.save_tensors("end_to_end.safetensors", model.state_dict())
    run.mark_done("end_to_end", history=history, diagnostics=diagnostics)
    return model.eval(), history


def _diagnostic_counts(bundle: DatasetBundle) -> torch.Tensor:
    return torch.full((bundle.num_classes,), DIAGNOSTIC_SAMPLES_PER_CLASS)


def _shown_classes(bundle: DatasetBundle) -> list[int]:
    """The head class and the two rarest: where stale pseudo-features matter most."""
    order = torch.argsort(bundle.train.class_counts(), descending=True).tolist()
    return [order[0], order[-2], order[-1]]


def _run_end_to_end(
    run: Run, bundle: DatasetBundle, encoder: nn.Module, device: torch.device, stage_s: dict[str, float]
) -> tuple[dict, dict, dict]:
    """Joint training, then optionally LDMLR's classifier stage on the co-trained denoiser's
    pseudo-features, with the jointly trained classifier as its control."""
    config = run.config
    train_counts = bundle.train.class_counts()
    eval_features = FeatureConfig(style="eval")
    started = time.perf_counter()
    # The starting statistics and the denoiser's pre-fit must see features as the trainer computes
    # them (encoder.features), not LDMLR's extraction path (no stem ReLU) that features.style may pick.
    starting = encode_dataset(encoder, bundle, eval_features, config.seed, device)
    model, history = stage_end_to_end(run, bundle, encoder, starting, device)
    stage_s["end_to_end_s"] = time.perf_counter() - started
    stage_s["seconds_per_epoch"] = sum(h["epoch_s"] for h in history) / len(history)
    tuned_encoded = encode_dataset(model.encoder, bundle, eval_features, config.seed, device)
    e2e_config = resolved_e2e_config(config, train_counts)
    prior = trained_prior(e2e_config, train_counts, model.pseudo_label_probs)
    extra = {"history": history, "diagnostics": run.stage_info("end_to_end")["diagnostics"], "gamma_ge": e2e_config.gamma_ge}
    joint = evaluate_all(model.encoder.fc, tuned_encoded, train_counts, prior, bundle)
    if not config.e2e.rebalance_classifier:
        return joint, extra, {}
    started = time.perf_counter()
    counts = ldmlr.pseudo_counts(train_counts, config.generation)
    pseudo_x, pseudo_y = e2e_pseudo_features(model, counts, run, stage_generator(config.seed, "generation", device))
    if config.e2e.rebalance_features == "as_trained":
        as_trained = features_as_trained(
            model.encoder, bundle, config.finetune, _padding(run), stage_generator(config.seed, "features"), device
        )
        tuned_encoded = dataclasses.replace(tuned_encoded, train=as_trained)
    result, retrained = retrain_with_pseudo(run, "classifier", model.encoder, tuned_encoded, pseudo_x, pseudo_y, bundle, device)
    stage_s["classifier_s"] = time.perf_counter() - started
    return result, extra | retrained, {"e2e_joint_classifier": joint}


def run_finetune_method(
    run: Run, bundle: DatasetBundle, encoder: nn.Module, encoded: EncodedDataset, device: torch.device, stage_s: dict[str, float]
) -> tuple[dict, dict, dict]:
    """Returns (the method's summary, extra results fields, controls computed on the way)."""
    if run.config.method == "e2e":
        return _run_end_to_end(run, bundle, encoder, device, stage_s)
    config = run.config
    train_counts = bundle.train.class_counts()
    real_prior = train_counts.double() / train_counts.sum()
    eval_features = FeatureConfig(style="eval")
    controls: dict = {}
    started = time.perf_counter()
    tuned, history = stage_finetune(run, bundle, encoder, device)
    stage_s["finetune_s"] = time.perf_counter() - started
    stage_s["seconds_per_epoch"] = sum(h["epoch_s"] for h in history) / len(history)
    tuned_eval = encode_dataset(tuned, bundle, eval_features, config.seed, device)
    finetuned = evaluate_all(tuned.fc, tuned_eval, train_counts, real_prior, bundle)
    if config.method == "ce_finetune":
        return finetuned, {"history": history}, controls
    controls["ce_finetune"] = finetuned

    tuned_encoded = encode_dataset(tuned, bundle, config.features, config.seed, device)
    counts = ldmlr.pseudo_counts(train_counts, config.generation)
    source = encoded if config.method == "ldmlr_stale" else tuned_encoded
    pseudo_x, pseudo_y, timings = stage_pseudo_features(run, source, counts, bundle.num_classes, device)
    stage_s |= timings
    # Compared with real features extracted as the denoiser's training features were (features.style).
    real = tuned_encoded.train
    report = compare(real.features, real.labels, pseudo_x, pseudo_y, bundle.num_classes)
    plot_two_clouds(real.features, real.labels, pseudo_x, pseudo_y, _shown_classes(bundle), run.path("two_clouds.png"))
    started = time.perf_counter()
    result, extra = retrain_with_pseudo(run, "classifier", tuned, tuned_encoded, pseudo_x, pseudo_y, bundle, device)
    stage_s["classifier_s"] = time.perf_counter() - started
    extra |= {"history": history, "diagnostics": [{"epoch": config.finetune.epochs, **report}]}
    return result, extra, controls
