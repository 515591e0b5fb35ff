"""`ldmlr_refit`: fine-tune the encoder with CE, then refit LDMLR's denoiser on its new features
and retrain the classifier on real + pseudo."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featdiff.config import guidance_rules

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

rules = guidance_rules

TRAINS_ENCODER = True


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.stages import ldmlr_after_finetune

    return ldmlr_after_finetune(context, refit=True)
