"""Every method by the name a config gives it. Adding a method is one line here and one module;
the pipeline looks methods up and never branches on their names."""

from __future__ import annotations

from collections.abc import Callable

from featdiff.errors import UserError
from featdiff.methods import ce, ce_finetune, fc_retrain, ldmlr, ldmlr_refit, ldmlr_stale
from featdiff.methods.e2e import method as e2e
from featdiff.methods.stages import MethodContext, MethodResult

MethodRun = Callable[[MethodContext], MethodResult]

METHODS: dict[str, MethodRun] = {
    "ce": ce.run,
    "fc_retrain": fc_retrain.run,
    "ldmlr": ldmlr.run,
    "ce_finetune": ce_finetune.run,
    "ldmlr_stale": ldmlr_stale.run,
    "ldmlr_refit": ldmlr_refit.run,
    "e2e": e2e.run,
}


def method_named(name: str) -> MethodRun:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]
