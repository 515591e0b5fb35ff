"""One run, stage by stage: data → encoder → features → the method (looked up by name) → results.

Each stage writes its output into the run folder and marks itself done, so `--resume` skips what is
finished and continues a stage from its last checkpoint. Every run also evaluates the encoder as
it is (`ce`), so a gain is always reported beside its control from the same run; each method adds
the controls it builds on.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn

from featdiff.config import RunConfig, config_to_dict
from featdiff.data.bundle import DatasetBundle, FeatureBundle, load_dataset
from featdiff.data.feature_file import FeatureFile, load_feature_file, save_feature_file
from featdiff.distributed import world
from featdiff.errors import UserError
from featdiff.evaluation.protocol import split_test_set
from featdiff.features import EncodedDataset, FeatureSet, encode_dataset
from featdiff.method_catalog import method_named
from featdiff.methods.stages import MethodContext, evaluate_all, logits_of
from featdiff.models.encoders import encoder_for, load_encoder, resolved_architecture
from featdiff.runs import Run, StageOutput
from featdiff.seeding import initialise, named_generator, reset_parameters
from featdiff.training.acceleration import accelerated
from featdiff.training.encoder import encoder_state, train_encoder

NEW_HEAD_STREAM = "encoder/new-head"
"""The stream of a public encoder's fresh classifier: the same in a run and in `featdiff encode`."""


def resolve_device(name: str) -> torch.device:
    """The config's device; under torchrun on CUDA, this rank's GPU (LOCAL_RANK)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("config key 'device' is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", world().local_rank)
    torch.cuda.set_device(device)
    return device


def new_encoder(bundle: DatasetBundle, seed: int, architecture: str = "auto") -> nn.Module:
    """A randomly initialised encoder for the dataset, drawn from the encoder stage's generator."""
    model = encoder_for(bundle.name, bundle.num_classes, bundle.train.images.shape[1], architecture)
    return initialise(model, named_generator(seed, "encoder/init"))


def load_checkpoint_encoder(config: RunConfig, bundle: DatasetBundle, new_head: torch.Generator | None) -> nn.Module:
    """`encoder.checkpoint` as the architecture the run would have trained (`encoder.architecture`;
    auto: the digits CNN for digits, ResNet-32 otherwise)."""
    architecture = resolved_architecture(bundle.name, config.encoder.architecture)
    channels = bundle.train.images.shape[1]
    return load_encoder(Path(config.encoder.checkpoint), bundle.num_classes, new_head, in_channels=channels, architecture=architecture)


def starts_from_scratch(config: RunConfig) -> bool:
    """A method that moves the encoder, started from random weights instead of a stage-1 encoder
    (the config allows `finetune.init: scratch` only for such methods)."""
    return config.finetune.init == "scratch"


def stage_encoder(run: Run, bundle: DatasetBundle, device: torch.device) -> nn.Module:
    config = run.config
    if config.encoder.checkpoint is not None:
        new_head = named_generator(config.seed, NEW_HEAD_STREAM) if config.encoder.public else None
        return load_checkpoint_encoder(config, bundle, new_head).to(device).eval()
    model = new_encoder(bundle, config.seed, config.encoder.architecture).to(device)
    if starts_from_scratch(config):
        return model.eval()

    def train() -> StageOutput:
        state = encoder_state(model, len(bundle.train.labels), config.encoder, named_generator(config.seed, "encoder/data"))
        run.resume_into("encoder", state)
        with accelerated(model, config.compute, device):
            train_encoder(
                state,
                bundle.train.images,
                bundle.train.labels,
                config.encoder,
                augment=bundle.augmenter(config.encoder.augment_padding),
                normalize=bundle.normalize,
                checkpoint=lambda saved: run.save_checkpoint("encoder", saved),
                log=lambda epoch, loss: run.log("encoder", epoch=epoch, loss=loss),
            )
        return model.state_dict(), {}

    weights, _ = run.stage("encoder", train)
    model.load_state_dict(weights)
    return model.eval()


class FeatureHead(nn.Module):
    """The stand-in encoder of a features file: nothing but a seeded random linear head (`fc`),
    which the classifier stages start from (there is no trained head to start from)."""

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.fc = nn.Linear(feature_dim, num_classes)
        reset_parameters(self.fc, generator)


def features_from_file(config: RunConfig, device: torch.device) -> tuple[FeatureBundle, nn.Module, EncodedDataset]:
    """`data.source: features`: the file's features as the run's encoded dataset (checked when
    read), a bundle of its classes and counts, and a stand-in encoder with a random head."""
    file = load_feature_file(config.data.features)
    counts = torch.bincount(file.train_labels, minlength=file.num_classes)
    bundle = FeatureBundle(name=Path(config.data.features).stem, classes=file.class_names, train_counts=counts)
    encoder = FeatureHead(file.feature_dim, file.num_classes, named_generator(config.seed, NEW_HEAD_STREAM)).to(device)
    encoded = EncodedDataset(
        train=FeatureSet(file.train_features, file.train_labels), test=FeatureSet(file.test_features, file.test_labels), train_holdout=None
    )
    return bundle, encoder, encoded


def preflight(config: RunConfig) -> None:
    """The method's checks that need the data but no training (before a run folder exists)."""
    method = method_named(config.method)
    if method.private and world().parallel:
        raise UserError(
            f"method {config.method} runs in one process, not under torchrun: every process would draw its own DP noise "
            "and the ranks' models would part; run it with `featdiff run` alone"
        )
    if method.preflight is not None:
        method.preflight(config)


def execute(run: Run) -> dict:
    """Run every stage the config's method needs and write results.json."""
    config = run.config
    method = method_named(config.method)
    if method.private and world().parallel:
        preflight(config)  # a resumed private run under torchrun: the same one-line refusal
    device = resolve_device(config.device)

    if config.data.source == "features":
        with run.timed("features_s"):
            bundle, encoder, encoded = features_from_file(config, device)
    else:
        with run.timed("data_and_encoder_s"):
            bundle = load_dataset(config.data, seed=config.seed)
            encoder = stage_encoder(run, bundle, device)
        with run.timed("features_s"):
            encoded = encode_dataset(encoder, bundle, config.features, config.seed, device, test_time_flip=config.evaluation.test_time_flip)

    evaluation = config.evaluation
    shuffle = evaluation.shuffle_report_labels
    parts = split_test_set(encoded.test.labels, evaluation.validation_fraction, evaluation.validation_seed, shuffle_report_labels=shuffle)
    context = MethodContext(run, bundle, encoder, encoded, device, controls={}, parts=parts)
    has_head = config.data.source != "features" and not config.encoder.public
    if not starts_from_scratch(config) and has_head:  # a random classifier's accuracy is no control
        context.controls["ce"] = evaluate_all(encoder.fc, encoded, context.real_prior, context)
        if not method.private:
            context.encoder_logits = logits_of(encoder.fc, encoded.test)
    outcome = method.run(context)
    controls = context.controls | outcome.controls
    results = {
        "method": config.method,
        "dataset": config.data.dataset if config.data.source != "features" else f"features:{bundle.name}",
        "imbalance_factor": config.data.imbalance_factor if config.data.source != "features" else imbalance_of(context.train_counts),
        "seed": config.seed,
        **outcome.summary,
        "controls": {name: summary for name, summary in controls.items() if name != config.method},
        **outcome.extra,
        "test_parts": {
            "validation": len(parts.validation),
            "report": len(parts.report),
            "validation_seed": evaluation.validation_seed,
            "report_labels_shuffled": evaluation.shuffle_report_labels,
        },
        "train_counts": context.train_counts.tolist(),
        "stage_s": run.stage_seconds,
        "wall_s": run.elapsed_s,
        "device": describe_device(device),
        "config": config_to_dict(config),
    }
    run.write_results(results)
    return results


def imbalance_of(counts: torch.Tensor) -> float:
    """n_max / n_min of the training counts (what a features file's imbalance factor is)."""
    return float(counts.max()) / float(counts.min())


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def shipped_encoder_features(config: RunConfig) -> FeatureFile:
    """The config's training and test features from its shipped encoder, with the dataset's class
    names: what `export_features` writes, for a caller that needs them in memory."""
    if config.encoder.checkpoint is None:
        raise UserError("featdiff encode needs encoder.checkpoint (a shipped encoder); train one with `featdiff run` first")
    device = resolve_device(config.device)
    bundle = load_dataset(config.data, seed=config.seed)
    new_head = named_generator(config.seed, NEW_HEAD_STREAM) if config.encoder.public else None
    encoder = load_checkpoint_encoder(config, bundle, new_head).to(device).eval()
    encoded = encode_dataset(encoder, bundle, config.features, config.seed, device, test_time_flip=config.evaluation.test_time_flip)
    return FeatureFile(
        train_features=encoded.train.features.cpu(),
        train_labels=encoded.train.labels.cpu(),
        test_features=encoded.test.features.cpu(),
        test_labels=encoded.test.labels.cpu(),
        class_names=bundle.train.classes,
    )


def export_features(config: RunConfig, out: Path) -> dict[str, int]:
    """The config's training and test features from its shipped encoder, as one safetensors file
    (`featdiff.data.feature_file`'s format, class names in its metadata): what `data.source:
    features` and a federation's clients (their shares of the training rows) and server (the test rows) read."""
    file = shipped_encoder_features(config)
    save_feature_file(out, file)
    return {"train": len(file.train_labels), "test": len(file.test_labels), "dim": file.feature_dim}
