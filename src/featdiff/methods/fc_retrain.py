"""`fc_retrain`: the classifier retrained on real features only, with LDMLR's stage-3 recipe.

The control of every frozen-encoder generative method: what retraining alone buys."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.stages import MethodResult, fc_retrain_control

    summary = fc_retrain_control(context)
    return MethodResult(summary, {}, {"fc_retrain": summary})
