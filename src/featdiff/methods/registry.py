"""Every method by the name a config gives it. Adding a method is one entry here and one module;
the pipeline looks methods up and never branches on their names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from featdiff.config import RunConfig
from featdiff.errors import UserError
from featdiff.methods import ce, ce_finetune, fc_retrain, ldmlr, ldmlr_dp, ldmlr_refit, ldmlr_stale
from featdiff.methods.e2e import method as e2e
from featdiff.methods.stages import MethodContext, MethodResult


@dataclass(frozen=True)
class Method:
    run: Callable[[MethodContext], MethodResult]
    preflight: Callable[[RunConfig], None] | None = None
    """Checks that need the data but no training (e.g. a privacy budget), run before a run folder
    is created; raises UserError."""


METHODS: dict[str, Method] = {
    "ce": Method(ce.run),
    "fc_retrain": Method(fc_retrain.run),
    "ldmlr": Method(ldmlr.run),
    "ce_finetune": Method(ce_finetune.run),
    "ldmlr_stale": Method(ldmlr_stale.run),
    "ldmlr_refit": Method(ldmlr_refit.run),
    "e2e": Method(e2e.run),
    "ldmlr_dp": Method(ldmlr_dp.run, ldmlr_dp.preflight),
}


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]
