"""One run, stage by stage: encoder → features → (denoiser → pseudo-features) → classifier → results
(methods that move the encoder continue in featdiff.methods.end_to_end).

Each stage writes its output into the run folder and marks itself done, so `--resume` skips what is
finished and continues a stage from its last checkpoint. Every run also evaluates the cheaper
methods it builds on (the encoder as it is, and the classifier retrained on real features only),
so a gain is always reported beside its control from the same run.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from featdiff.config import RunConfig, config_to_dict
from featdiff.data.bundle import DatasetBundle, load_dataset
from featdiff.errors import UserError
from featdiff.features import encode_dataset
from featdiff.methods import ldmlr
from featdiff.methods.end_to_end import FINETUNE_METHODS, run_finetune_method
from featdiff.models.encoders import load_encoder, save_encoder
from featdiff.models.resnet_cifar import resnet32
from featdiff.models.small_cnn import SmallCNN
from featdiff.runs import Run
from featdiff.stages import (
    STAGE_SEEDS,
    evaluate_all,
    retrain_classifier,
    retrain_with_pseudo,
    stage_generator,
    stage_pseudo_features,
)
from featdiff.training.acceleration import accelerated
from featdiff.training.classifier import WeightedFeatures
from featdiff.training.encoder import train_encoder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("config key 'device' is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def new_encoder(bundle: DatasetBundle) -> nn.Module:
    if bundle.name == "digits":
        return SmallCNN(bundle.num_classes, in_channels=bundle.train.images.shape[1])
    return resnet32(bundle.num_classes)


def stage_encoder(run: Run, bundle: DatasetBundle, device: torch.device) -> nn.Module:
    config = run.config
    if config.encoder.checkpoint is not None:
        return load_encoder(Path(config.encoder.checkpoint), bundle.num_classes).to(device).eval()
    torch.manual_seed(config.seed * 1000 + STAGE_SEEDS["encoder"])
    model = new_encoder(bundle).to(device)
    if starts_from_scratch(config):
        return model.eval()
    if run.stage_done("encoder"):
        model.load_state_dict(load_file(run.path("encoder.safetensors")))
        return model.eval()
    generator = stage_generator(config.seed, "encoder")
    with accelerated(model, config.compute, device):
        train_encoder(
            model,
            bundle.train.images,
            bundle.train.labels,
            config.encoder,
            augment=bundle.augmenter(config.encoder.augment_padding),
            normalize=bundle.normalize,
            generator=generator,
            resume=run.load_checkpoint("encoder"),
            checkpoint=lambda state: run.save_checkpoint("encoder", state),
            log=lambda epoch, loss: run.log("encoder", epoch=epoch, loss=loss),
        )
    save_encoder(model, run.path("encoder.safetensors"))
    run.mark_done("encoder")
    return model.eval()


def starts_from_scratch(config: RunConfig) -> bool:
    """A method that moves the encoder, started from random weights instead of a stage-1 encoder."""
    return config.method in FINETUNE_METHODS and config.finetune.init == "scratch"


def execute(run: Run) -> dict:
    """Run every stage the config's method needs and write results.json."""
    config = run.config
    device = resolve_device(config.device)
    stage_s: dict[str, float] = {}

    started = time.perf_counter()
    bundle = load_dataset(config.data, seed=config.seed)
    encoder = stage_encoder(run, bundle, device)
    stage_s["data_and_encoder_s"] = time.perf_counter() - started

    started = time.perf_counter()
    encoded = encode_dataset(encoder, bundle, config.features, config.seed, device)
    stage_s["features_s"] = time.perf_counter() - started

    train_counts = bundle.train.class_counts()
    real_prior = train_counts.double() / train_counts.sum()
    # A random encoder's accuracy is no control.
    controls = {} if starts_from_scratch(config) else {"ce": evaluate_all(encoder.fc, encoded, train_counts, real_prior, bundle)}
    result = controls.get("ce", {})
    real = WeightedFeatures(encoded.train.features, encoded.train.labels, torch.ones(len(encoded.train.labels)))

    if config.method in ("fc_retrain", "ldmlr"):
        started = time.perf_counter()
        fc_real = retrain_classifier(run, "fc_retrain", encoder, real, device)
        stage_s["fc_retrain_s"] = time.perf_counter() - started
        controls["fc_retrain"] = evaluate_all(fc_real, encoded, train_counts, real_prior, bundle)
        result = controls["fc_retrain"]

    extra: dict = {}
    if config.method in FINETUNE_METHODS:
        result, extra, finetune_controls = run_finetune_method(run, bundle, encoder, encoded, device, stage_s)
        controls |= finetune_controls

    if config.method == "ldmlr":
        counts = ldmlr.pseudo_counts(train_counts, config.generation)
        pseudo_x, pseudo_y, timings = stage_pseudo_features(run, encoded, counts, bundle.num_classes, device)
        stage_s |= timings
        started = time.perf_counter()
        result, extra = retrain_with_pseudo(run, "classifier", encoder, encoded, pseudo_x, pseudo_y, bundle, device)
        stage_s["classifier_s"] = time.perf_counter() - started

    results = {
        "method": config.method,
        "dataset": config.data.dataset,
        "imbalance_factor": config.data.imbalance_factor,
        "seed": config.seed,
        **result,
        "controls": {name: summary for name, summary in controls.items() if name != config.method},
        **extra,
        "train_counts": train_counts.tolist(),
        "stage_s": stage_s,
        "wall_s": run.elapsed_s,
        "device": describe_device(device),
        "config": config_to_dict(config),
    }
    run.write_results(results)
    return results


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
