"""`ce`: the encoder and its classifier as they are (stage 1, or LDMLR's shipped encoder). The
pipeline evaluates it for every run as the first control; this method reports it as the result."""

from __future__ import annotations

from featdiff.methods.stages import MethodContext, MethodResult


def run(context: MethodContext) -> MethodResult:
    return MethodResult(context.controls["ce"], {}, {})
