"""`ce`: the encoder and its classifier as they are (stage 1, or LDMLR's shipped encoder). The
pipeline evaluates it for every run as the first control; this method reports it as the result.

Like every method module, it imports no torch at its top (see `featdiff.method_catalog`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.stages import MethodResult

    return MethodResult(context.controls["ce"], {}, {})
