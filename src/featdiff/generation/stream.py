"""A fill of pseudo-features written to disk chunk by chunk, never held at once: the one writer
behind `featdiff run`'s fills and the API's `Generator.write_fill`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from featdiff.io import StreamedTensorFile


def write_fill(
    path: Path,
    labels: Tensor,
    dim: int,
    draw: Callable[[Tensor], Tensor],
    *,
    chunk: int,
    real: tuple[Tensor, Tensor] | None = None,
) -> Path:
    """A safetensors file of `features` (N, D) and `labels` (N,): the `real` (features, labels)
    first when given, then `draw(part)` for each `chunk` of `labels` in order, so that only one
    chunk is ever in memory. The file appears atomically, complete, or not at all."""
    rows = len(labels) + (0 if real is None else len(real[1]))
    with StreamedTensorFile(path, {"features": ((rows, dim), torch.float32), "labels": ((rows,), torch.int64)}) as out:
        if real is not None:
            out.append("features", real[0])
            out.append("labels", real[1])
        for part in labels.split(chunk):
            out.append("features", draw(part))
            out.append("labels", part)
    return Path(path)
