"""`fc_retrain`: the classifier retrained on real features only, with LDMLR's stage-3 recipe.

The control of every frozen-encoder generative method: what retraining alone buys."""

from __future__ import annotations

from featdiff.methods.stages import MethodContext, MethodResult, fc_retrain_control


def run(context: MethodContext) -> MethodResult:
    summary = fc_retrain_control(context)
    return MethodResult(summary, {}, {"fc_retrain": summary})
