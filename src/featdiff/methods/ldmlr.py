"""`ldmlr`: LDMLR on a frozen encoder — fit a class-conditional denoiser on its training
features, sample pseudo-features, retrain the classifier on real + pseudo (beside `fc_retrain`).

The denoiser sees features through a scaler: featdiff standardises each dimension with the
training features' statistics; the faithful preset maps them as if they lay in [0, 1] and clips
samples there, as LDMLR's code does (which truncates the unbounded ReLU features).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult


def run(context: MethodContext) -> MethodResult:
    from featdiff.generation.pseudo import pseudo_counts
    from featdiff.methods.stages import MethodResult, cheap_controls, retrain_with_pseudo, stage_pseudo_features

    controls = cheap_controls(context)
    counts = pseudo_counts(context.train_counts, context.config.generation)
    pseudo, labels = stage_pseudo_features(context, context.encoded.train, counts)
    summary, extra = retrain_with_pseudo(context, "classifier", context.encoder, context.encoded, pseudo, labels)
    return MethodResult(summary, extra, controls)
