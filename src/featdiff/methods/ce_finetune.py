"""`ce_finetune`: fine-tune encoder and classifier with cross-entropy for `finetune.epochs` — the
control for every method that moves the encoder (same batches, augmentation and schedule)."""

from __future__ import annotations

from featdiff.methods.stages import MethodContext, MethodResult, finetuned_control


def run(context: MethodContext) -> MethodResult:
    _, summary, extra = finetuned_control(context)
    return MethodResult(summary, extra, {})
