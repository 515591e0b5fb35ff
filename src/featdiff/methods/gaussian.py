"""`gaussian`: the class-conditional Gaussian generator in LDMLR's place — each class's training
mean and (shrunk) covariance, sampled with the same counts, temperatures, transfer and classifier
recipe as `ldmlr` (`featdiff.generation.gaussian`).

It costs a D×D covariance per class and no training: the control every generator must beat, run
beside `ldmlr` in every `ldmlr` run too (the control `gaussian`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

FEATURES_ONLY = True


def run(context: MethodContext) -> MethodResult:
    from featdiff.generation.pseudo import pseudo_counts
    from featdiff.methods.stages import MethodResult, cheap_controls, retrain_with_pseudo, stage_gaussian_pseudo_features

    controls = cheap_controls(context)
    counts = pseudo_counts(context.train_counts, context.config.generation)
    pseudo, labels = stage_gaussian_pseudo_features(context, context.encoded.train, counts)
    summary, extra = retrain_with_pseudo(context, "classifier", context.encoder, context.encoded, pseudo, labels)
    return MethodResult(summary, extra, controls)
