"""`ldmlr_stale`: LDMLR whose denoiser learned the starting encoder's features, used after the
encoder was fine-tuned with CE (the 'two clouds' case end-to-end training addresses)."""

from __future__ import annotations

from featdiff.methods.stages import MethodContext, MethodResult, ldmlr_after_finetune


def run(context: MethodContext) -> MethodResult:
    return ldmlr_after_finetune(context, refit=False)
