"""`ce_finetune`: fine-tune encoder and classifier with cross-entropy for `finetune.epochs` — the
control for every method that moves the encoder (same batches, augmentation and schedule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

TRAINS_ENCODER = True


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.stages import MethodResult, finetuned_control

    _, summary, extra = finetuned_control(context)
    return MethodResult(summary, extra, {})
