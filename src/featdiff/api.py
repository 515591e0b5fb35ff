"""featdiff as a library: fit a class-conditional feature generator on your own (features, labels)
tensors, sample pseudo-features inside your own training loop, and score the controls, with the
CLI's defaults and checks.

    import featdiff

    generator = featdiff.fit(features, labels)                          # LDMLR's feature denoiser
    generator = featdiff.fit(features, labels, generator="gaussian")    # the class-Gaussian control
    x, y = generator.sample_per_class(100)                             # 100 pseudo-features of every class
    x, y = generator.balanced_fill()                                   # every class up to the largest
    scores = featdiff.controls(features, labels, test_features, test_labels)

Knobs are the config's: `config={"diffusion": {"steps": 2000}, "generation": {"temperature_power": 0.2}}`
is validated as a run's config is (a bad key is one UserError naming it). Inputs are checked as a
features file is (shapes, finite values, labels in range, every class present). Every draw comes
from a named stream of `seed`, so the same call gives the same features.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from featdiff.config import RunConfig, config_from_dict
from featdiff.data.feature_file import check_features
from featdiff.errors import UserError
from featdiff.evaluation.metrics import summarize
from featdiff.evaluation.protocol import part_summaries, split_test_set
from featdiff.generation.gaussian import ClassGaussian
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, balanced_counts, fit_generator, labels_for
from featdiff.generation.stream import write_fill
from featdiff.generation.transfer import HeadToTail, class_temperatures, fitted_transfer
from featdiff.io import mapped_tensors
from featdiff.seeding import named_generator, reset_parameters
from featdiff.training.classifier import WeightedFeatures, classifier_head, classifier_state, train_classifier

GeneratorKind = Literal["diffusion", "gaussian"]


def _config(config: dict | RunConfig | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    return config_from_dict(config or {})


def _device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Generator:
    """A fitted class-conditional generator of feature vectors (the denoiser, or the class
    Gaussian), with the generation knobs of its config (class temperatures, head-to-tail transfer)
    and the training features the transfer borrows from."""

    kind: GeneratorKind
    config: RunConfig
    counts: Tensor
    """Training records per class."""
    features: Tensor
    labels: Tensor
    denoiser: FeatureGenerator | None = None
    gaussian: ClassGaussian | None = None

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def sample(self, labels: Tensor, *, seed: int | None = None) -> Tensor:
        """One pseudo-feature per label (float32, on the CPU), from the stream "api/sampling" of
        `seed` (the config's seed by default)."""
        labels = self._checked(labels)
        return self._draw(labels, *self._streams(seed))

    def _checked(self, labels: Tensor) -> Tensor:
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise UserError(f"labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
        return labels

    def _streams(self, seed: int | None) -> tuple[torch.Generator, torch.Generator]:
        """The sampling stream (on the denoiser's device) and the transfer stream of `seed`."""
        seed = self.config.seed if seed is None else seed
        device = torch.device("cpu") if self.denoiser is None else next(self.denoiser.denoiser.parameters()).device
        return named_generator(seed, "api/sampling", device), named_generator(seed, "api/transfer")

    def _draw(self, labels: Tensor, sampling: torch.Generator, transfer: torch.Generator) -> Tensor:
        generation = self.config.generation
        temperatures = class_temperatures(self.counts, generation.temperature, generation.temperature_power)
        temperature = temperatures[labels]
        if self.denoiser is not None:
            sampled = self.denoiser.sample(labels, SamplerSettings.of(self.config.diffusion), sampling, temperature=temperature)
        else:
            assert self.gaussian is not None
            sampled = self.gaussian.sample(labels, sampling, temperature)
        head_to_tail = self._head_to_tail
        return sampled.cpu() if head_to_tail is None else head_to_tail(sampled.cpu(), labels, transfer)

    @cached_property
    def _head_to_tail(self) -> HeadToTail | None:
        """The config's transfer, fitted once to the training features and reused by every draw."""
        return fitted_transfer(self.config.generation, self.features, self.labels, self.num_classes)

    def write_fill(
        self,
        path: str | Path,
        counts: Tensor | None = None,
        *,
        include_real: bool = True,
        chunk: int = 65_536,
        seed: int | None = None,
    ) -> Path:
        """Pseudo-features written to a safetensors file `chunk` rows at a time, never all in
        memory: counts[c] of every class c (the balanced fill by default), after the training
        features when `include_real`. The file holds `features` (N, D) and `labels` (N,), in class
        order, and is what `open_features` maps for `train_head`, so a fill of millions of rows
        trains batch by batch. The draws come from the same streams as `sample`'s but chunk by
        chunk, so they differ from one `sample` call's; the same call writes the same file."""
        counts = balanced_counts(self.counts) if counts is None else torch.as_tensor(counts, dtype=torch.int64)
        if counts.shape != self.counts.shape or bool((counts < 0).any()):
            raise UserError(f"counts must be {self.num_classes} non-negative numbers, one per class; got shape {tuple(counts.shape)}")
        if chunk < 1:
            raise UserError(f"chunk must be at least 1 row, got {chunk}")
        streams = self._streams(seed)
        real = (self.features, self.labels) if include_real else None
        dim = self.features.shape[1]
        return write_fill(Path(path), labels_for(counts), dim, lambda part: self._draw(part, *streams), chunk=chunk, real=real)

    def sample_per_class(self, n: int, *, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """`n` pseudo-features of every class: (features, labels)."""
        labels = labels_for(torch.full((self.num_classes,), n))
        return self.sample(labels, seed=seed), labels

    def balanced_fill(self, *, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """Enough pseudo-features to fill every class up to the largest (LDMLR's balanced rule)."""
        labels = labels_for(balanced_counts(self.counts))
        return self.sample(labels, seed=seed), labels


def fit(
    features: Tensor,
    labels: Tensor,
    *,
    generator: GeneratorKind = "diffusion",
    config: dict | RunConfig | None = None,
    device: torch.device | str | None = None,
) -> Generator:
    """Fit a class-conditional generator of `features` (N, D) given `labels` (N,): the feature
    denoiser (`diffusion`, LDMLR's stage 2 with the config's `diffusion` section) or the class
    Gaussian (`gaussian`, `generation.shrinkage`)."""
    run_config = _config(config)
    features, labels = torch.as_tensor(features), torch.as_tensor(labels)
    num_classes = check_features(features, labels, where="fit")
    features, labels = features.float().cpu(), labels.long().cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    fitted = Generator(generator, run_config, counts, features, labels)
    if generator == "gaussian":
        generation = run_config.generation
        fitted.gaussian = ClassGaussian.fitted_to(
            features, labels, num_classes, shrinkage=generation.shrinkage, covariance=generation.covariance
        )
    elif generator == "diffusion":
        fitted.denoiser = fit_generator(
            features.to(_device(device)),
            labels.to(_device(device)),
            num_classes,
            run_config.diffusion,
            seed=run_config.seed,
            device=_device(device),
        )
    else:
        raise UserError(f"generator must be 'diffusion' or 'gaussian', got {generator!r}")
    return fitted


def open_features(path: str | Path) -> tuple[Tensor, Tensor]:
    """(features, labels) of a file `Generator.write_fill` wrote, memory-mapped: `train_head` reads
    the rows of each batch from the file, so the fill need not fit in memory."""
    tensors = mapped_tensors(Path(path), fix="write it again with Generator.write_fill")
    if set(tensors) != {"features", "labels"}:
        raise UserError(f"{path} holds {sorted(tensors)}, not the features and labels Generator.write_fill writes")
    return tensors["features"], tensors["labels"].clone()


def train_head(
    features: Tensor,
    labels: Tensor,
    *,
    weights: Tensor | None = None,
    config: dict | RunConfig | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """A linear head trained with the config's `classifier` recipe (LDMLR's stage 3 by default:
    Adam 1e-3, 400 epochs; its loss and normalisation) from a seeded random start."""
    run_config = _config(config)
    features, labels = torch.as_tensor(features).float(), torch.as_tensor(labels).long()
    classes = check_features(features, labels, where="train_head", num_classes=num_classes)
    fc = nn.Linear(features.shape[1], classes)
    reset_parameters(fc, named_generator(run_config.seed, "api/head-init"))
    head = classifier_head(fc, run_config.classifier)
    data = WeightedFeatures(features, labels, torch.ones(len(labels)) if weights is None else torch.as_tensor(weights).float())
    state = classifier_state(head, len(data), run_config.classifier, named_generator(run_config.seed, "api/head-data"))
    train_classifier(state, data, run_config.classifier, desc="head")
    return head.eval()


def evaluate(
    head: nn.Module, test_features: Tensor, test_labels: Tensor, train_counts: Tensor, *, config: dict | RunConfig | None = None
) -> dict:
    """A head's summary as a run reports it: the full test set, its validation and report parts,
    and `tuned` (logits − τ·log(prior of `train_counts`), τ chosen on the validation part)."""
    run_config = _config(config)
    test_features, test_labels = torch.as_tensor(test_features).float(), torch.as_tensor(test_labels).long()
    counts = torch.as_tensor(train_counts)
    with torch.inference_mode():
        logits = head(test_features)
    evaluation = run_config.evaluation
    parts = split_test_set(test_labels, evaluation.validation_fraction, evaluation.validation_seed)
    return summarize(logits, test_labels, counts) | part_summaries(logits, test_labels, parts, counts, prior=None, index_groups=False)


def controls(
    features: Tensor, labels: Tensor, test_features: Tensor, test_labels: Tensor, *, config: dict | RunConfig | None = None
) -> dict[str, dict]:
    """The cheap controls every generator has to beat, trained and scored as a run does: heads on
    the real features with cross-entropy (`fc_retrain`), the logit-adjusted loss (`fc_retrain_la`)
    and on normalised features, and the class Gaussian's balanced fill (`gaussian`)."""
    run_config = _config(config)
    features, labels = torch.as_tensor(features).float(), torch.as_tensor(labels).long()
    num_classes = check_features(features, labels, where="controls")
    check_features(torch.as_tensor(test_features), torch.as_tensor(test_labels), where="controls (test)", num_classes=num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    scores = {}
    for name, change in {
        "fc_retrain": {},
        "fc_retrain_la": {"loss": "logit_adjusted"},
        "fc_retrain_normalized": {"normalize": True},
    }.items():
        recipe = run_config.model_copy(update={"classifier": run_config.classifier.model_copy(update=change)})
        scores[name] = evaluate(
            train_head(features, labels, config=recipe, num_classes=num_classes), test_features, test_labels, counts, config=recipe
        )
    pseudo, pseudo_labels = fit(features, labels, generator="gaussian", config=run_config).balanced_fill()
    combined = train_head(torch.cat([features, pseudo]), torch.cat([labels, pseudo_labels]), config=run_config, num_classes=num_classes)
    scores["gaussian"] = evaluate(combined, test_features, test_labels, counts, config=run_config)
    return scores


__all__ = ["Generator", "controls", "evaluate", "fit", "open_features", "train_head"]
