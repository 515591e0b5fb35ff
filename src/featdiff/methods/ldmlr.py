"""`ldmlr`: LDMLR on a frozen encoder — fit a class-conditional denoiser on its training
features, sample pseudo-features, retrain the classifier on real + pseudo — beside its controls
from the same run: the cheap heads on real features (`fc_retrain`, `fc_retrain_la`,
`fc_retrain_normalized`) and `gaussian`, the class-Gaussian generator with the same counts,
post-processing and classifier recipe (the generator the diffusion model has to beat).

The denoiser sees features through a scaler: featdiff standardises each dimension with the
training features' statistics; the faithful preset maps them as if they lay in [0, 1] and clips
samples there, as LDMLR's code does (which truncates the unbounded ReLU features).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from featdiff.config import RunConfig, guidance_rules, load_config
from featdiff.errors import UserError

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

FEATURES_ONLY = True

rules = guidance_rules

SAMPLER_KEYS = ("sampler", "sample_steps", "eta", "guidance", "clip_widen", "denoiser_from")
"""Diffusion keys that act only when sampling: a reused denoiser may differ in them."""
AFTER_THE_DENOISER = (
    "name",
    "device",
    "evaluation",
    "generation",
    "classifier",
    "filter",
    "compute",
    "finetune",
    "e2e",
    "privacy",
    "federated",
)
"""Sections an ldmlr denoiser never sees."""


def preflight(config: RunConfig) -> None:
    """A reused denoiser (`diffusion.denoiser_from`) must come from a finished run whose config
    agrees on everything the denoiser depends on."""
    source = config.diffusion.denoiser_from
    if not source:
        return
    folder = Path(source)
    saved = load_config(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    if saved is None:
        raise UserError(f"diffusion.denoiser_from: {folder} is not a featdiff run folder (no config.yaml); name a finished ldmlr run")
    if not (folder / "stages" / "denoiser.done").is_file():
        raise UserError(f"diffusion.denoiser_from: {folder} has no finished denoiser stage; finish that run first or fit a denoiser here")
    differing = _first_difference(denoiser_inputs(saved), denoiser_inputs(config))
    if differing is not None:
        raise UserError(
            f"diffusion.denoiser_from: {folder} was fitted with {differing} = {_dotted_value(saved, differing)!r}, this run has "
            f"{_dotted_value(config, differing)!r}; a reused denoiser must agree on data, encoder, features, seed "
            "and the diffusion training keys"
        )


def denoiser_inputs(config: RunConfig) -> dict:
    """The part of a config an ldmlr denoiser depends on: two configs with equal parts fit the same denoiser."""
    values = {key: value for key, value in config.model_dump().items() if key not in AFTER_THE_DENOISER}
    values["diffusion"] = {key: value for key, value in values["diffusion"].items() if key not in SAMPLER_KEYS}
    return values


def _first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    for key in a:
        if isinstance(a[key], dict):
            found = _first_difference(a[key], b[key], f"{prefix}{key}.")
            if found is not None:
                return found
        elif a[key] != b[key]:
            return f"{prefix}{key}"
    return None


def _dotted_value(config: RunConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def run(context: MethodContext) -> MethodResult:
    from featdiff.generation.pseudo import pseudo_counts
    from featdiff.methods.stages import (
        MethodResult,
        cheap_controls,
        retrain_with_pseudo,
        stage_gaussian_pseudo_features,
        stage_pseudo_features,
    )

    controls = cheap_controls(context)
    counts = pseudo_counts(context.train_counts, context.config.generation)
    encoder, encoded = context.encoder, context.encoded
    if context.config.evaluation.controls:
        gaussian, gaussian_labels = stage_gaussian_pseudo_features(context, encoded.train, counts)
        controls["gaussian"], _ = retrain_with_pseudo(context, "gaussian_classifier", encoder, encoded, gaussian, gaussian_labels)
    pseudo, labels = stage_pseudo_features(context, encoded.train, counts)
    summary, extra = retrain_with_pseudo(context, "classifier", encoder, encoded, pseudo, labels)
    return MethodResult(summary, extra, controls)
