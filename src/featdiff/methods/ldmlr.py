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

from typing import TYPE_CHECKING

from featdiff.config import guidance_rules

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

rules = guidance_rules


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
    gaussian, gaussian_labels = stage_gaussian_pseudo_features(context, encoded.train, counts)
    controls["gaussian"], _ = retrain_with_pseudo(context, "gaussian_classifier", encoder, encoded, gaussian, gaussian_labels)
    pseudo, labels = stage_pseudo_features(context, encoded.train, counts)
    summary, extra = retrain_with_pseudo(context, "classifier", encoder, encoded, pseudo, labels)
    return MethodResult(summary, extra, controls)
