"""`ldmlr_stale`: LDMLR whose denoiser learned the starting encoder's features, used after the
encoder was fine-tuned with CE (the 'two clouds' case end-to-end training addresses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featdiff.config import guidance_rules

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

rules = guidance_rules


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.stages import ldmlr_after_finetune

    return ldmlr_after_finetune(context, refit=False)
