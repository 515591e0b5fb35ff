"""`ldmlr_refit`: fine-tune the encoder with CE, then refit LDMLR's denoiser on its new features
and retrain the classifier on real + pseudo."""

from __future__ import annotations

from featdiff.methods.stages import MethodContext, MethodResult, ldmlr_after_finetune


def run(context: MethodContext) -> MethodResult:
    return ldmlr_after_finetune(context, refit=True)
