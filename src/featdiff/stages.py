"""Stages shared by every method: seeded random streams, evaluation, classifier retraining, and
denoiser fitting with pseudo-feature generation. Each stage stores its output in the run folder
and marks itself done, so a resumed run skips it."""

from __future__ import annotations

import copy
import time

import torch
from safetensors.torch import load_file
from torch import nn

from featdiff.data.bundle import DatasetBundle
from featdiff.evaluation.metrics import summarize
from featdiff.features import EncodedDataset, FeatureSet
from featdiff.methods import ldmlr
from featdiff.methods.pseudo_filter import ClassGeometry, band_fractions, band_weights
from featdiff.runs import Run
from featdiff.training.classifier import WeightedFeatures, train_classifier

STAGE_SEEDS = {
    "encoder": 1,
    "features": 2,
    "fc_retrain": 3,
    "denoiser": 4,
    "generation": 5,
    "classifier": 6,
    "finetune": 7,
    "end_to_end": 8,
    "diagnostics": 9,
}


def stage_generator(seed: int, stage: str, device: torch.device | str = "cpu") -> torch.Generator:
    """Independent, reproducible random streams per stage, so changing one stage's length does not
    shift the randomness of the next."""
    return torch.Generator(device=device).manual_seed(seed * 1000 + STAGE_SEEDS[stage])


def evaluate(classifier: nn.Module, features: FeatureSet, train_counts: torch.Tensor, prior: torch.Tensor, index_groups: bool) -> dict:
    device = next(classifier.parameters()).device
    with torch.inference_mode():
        logits = classifier(features.features.to(device)).cpu()
    return summarize(logits, features.labels, train_counts, prior=prior, index_groups=index_groups)


def evaluate_all(
    classifier: nn.Module, encoded: EncodedDataset, train_counts: torch.Tensor, prior: torch.Tensor, bundle: DatasetBundle
) -> dict:
    result = evaluate(classifier, encoded.test, train_counts, prior, bundle.index_groups)
    if encoded.validation is not None:
        result["validation"] = evaluate(classifier, encoded.validation, train_counts, prior, bundle.index_groups)
    return result


def retrain_classifier(run: Run, stage: str, encoder: nn.Module, data: WeightedFeatures, device: torch.device) -> nn.Linear:
    config = run.config
    classifier = copy.deepcopy(encoder.fc).to(device)
    if config.classifier.init == "random":
        torch.manual_seed(config.seed * 1000 + STAGE_SEEDS[stage])
        classifier.reset_parameters()
    if run.stage_done(stage):
        classifier.load_state_dict(load_file(run.path(f"{stage}.safetensors")))
        return classifier
    history = train_classifier(
        classifier,
        data,
        config.classifier,
        stage_generator(config.seed, stage),
        resume=run.load_checkpoint(stage),
        checkpoint=lambda state: run.save_checkpoint(stage, state),
        desc=stage,
    )
    run.log(stage, final_loss=history[-1], epochs=len(history))
    run.save_tensors(f"{stage}.safetensors", classifier.state_dict())
    run.mark_done(stage)
    return classifier


def stage_pseudo_features(
    run: Run, encoded: EncodedDataset, counts: torch.Tensor, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    config = run.config
    timings: dict[str, float] = {}
    if run.stage_done("generation"):
        stored = run.load_tensors("pseudo_features.safetensors")
        return stored["features"], stored["labels"], run.stage_info("generation")["timings"]
    started = time.perf_counter()
    torch.manual_seed(config.seed * 1000 + STAGE_SEEDS["denoiser"])
    feature_generator = ldmlr.fit_denoiser(
        encoded.train.features,
        encoded.train.labels,
        num_classes,
        config.diffusion,
        stage_generator(config.seed, "denoiser", device),
        device,
        resume=run.load_checkpoint("denoiser"),
        checkpoint=lambda state: run.save_checkpoint("denoiser", state),
        log=lambda step, loss: run.log("denoiser", step=step, loss=loss),
    )
    run.save_tensors("denoiser.safetensors", feature_generator.tensors())
    timings["denoiser_s"] = time.perf_counter() - started
    started = time.perf_counter()
    features, labels = ldmlr.generate(feature_generator, counts, config.diffusion, stage_generator(config.seed, "generation", device))
    timings["generation_s"] = time.perf_counter() - started
    run.save_tensors("pseudo_features.safetensors", {"features": features, "labels": labels})
    run.mark_done("generation", timings=timings)
    return features, labels, timings


def retrain_with_pseudo(
    run: Run,
    stage: str,
    encoder: nn.Module,
    encoded: EncodedDataset,
    pseudo_features: torch.Tensor,
    pseudo_labels: torch.Tensor,
    bundle: DatasetBundle,
    device: torch.device,
) -> tuple[dict, dict]:
    """Retrain the classifier on real plus (optionally AID/OOD-filtered, weighted) pseudo-features.

    Logit adjustment uses the prior of what the classifier was trained on: real counts plus the
    pseudo-features' total weight per class. Returns the summary and what to add to results.json.
    """
    config = run.config
    num_classes = bundle.num_classes
    train_counts = bundle.train.class_counts()
    weights = torch.full((len(pseudo_labels),), config.generation.pseudo_weight)
    extra: dict = {"pseudo_counts": torch.bincount(pseudo_labels, minlength=num_classes).tolist()}
    if config.filter.enabled:
        geometry = ClassGeometry.of(encoded.train.features, encoded.train.labels, num_classes, config.filter.radius)
        multipliers, band = band_weights(pseudo_features, pseudo_labels, geometry, config.filter)
        weights = weights * multipliers
        extra["filter_bands"] = band_fractions(band)
    kept = weights > 0
    pseudo_features, pseudo_labels, weights = pseudo_features[kept], pseudo_labels[kept], weights[kept]
    real = encoded.train
    combined = WeightedFeatures(
        torch.cat([real.features, pseudo_features]),
        torch.cat([real.labels, pseudo_labels]),
        torch.cat([torch.ones(len(real.labels)), weights]),
    )
    classifier = retrain_classifier(run, stage, encoder, combined, device)
    pseudo_mass = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, pseudo_labels, weights.double())
    trained_counts = train_counts.double() + pseudo_mass
    return evaluate_all(classifier, encoded, train_counts, trained_counts / trained_counts.sum(), bundle), extra
