"""`fc_retrain`: the classifier retrained on real features only, with LDMLR's stage-3 recipe.

The control of every frozen-encoder generative method: what retraining alone buys. Reported beside
the other cheap heads (`featdiff.methods.stages.CHEAP_HEADS`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

FEATURES_ONLY = True


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.stages import MethodResult, cheap_controls, fc_retrain_control

    controls = cheap_controls(context)
    summary = controls["fc_retrain"] if "fc_retrain" in controls else fc_retrain_control(context)
    return MethodResult(summary, {}, controls)
