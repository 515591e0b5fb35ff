"""Running an encoder over a whole uint8 image set, in batches, on any device.

Images stay uint8 on the host and only each batch is moved and normalised on the device, so a
50k-image set never exists as float32 in memory. Two extraction styles exist because LDMLR's
training features were not taken the way its test features were (ldmlr.md §1.2): "eval" is the
network as used at test time, "ldmlr" reproduces LDMLR's quirky path for the faithful baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch

from featdiff.data.augment import normalize
from featdiff.models.encoders import Encoder
from featdiff.progress import progress as progress_bar

Style = Literal["eval", "ldmlr"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def preserved_state(model: Encoder) -> Iterator[None]:
    """Restore every buffer (BN running statistics, batch counters) and every module's train flag on exit.

    LDMLR extracted features in train mode and thereby overwrote its encoder's running statistics;
    callers here get their model back bit for bit, whatever happened inside.
    """
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    modes = {module: module.training for module in model.modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        for module, training in modes.items():
            module.training = training


def encode(
    model: Encoder,
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    style: Style = "eval",
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Features (N, feature_dim), float32 on the CPU, row i for image i.

    style "eval": eval-mode BN, `model.features`.
    style "ldmlr": train-mode BN (each batch normalised by its own statistics) and
    `model.features_ldmlr` (no stem ReLU), as LDMLR's feature_encode.py did. A feature then
    depends on the other images in its batch: batches are consecutive runs of `batch_size` images
    in the order given, so to be faithful pass images in a shuffled order with batch_size 64.
    `augment`, if given, receives each uint8 batch on the device before normalisation (LDMLR
    extracted one augmented view of every training image) and returns a batch of the same shape.
    The model is moved to `device`; its buffers and train/eval mode are left as they were.
    """
    with preserved_state(model):
        if style == "eval":
            model.eval()
            extract = model.features
        elif style == "ldmlr":
            model.train()
            extract = model.features_ldmlr
        else:
            raise ValueError(f"unknown feature style {style!r}: use 'eval' or 'ldmlr'")
        return _batched(model, extract, model.feature_dim, images, mean, std, batch_size, device, augment, progress)


def _batched(
    model: Encoder,
    apply: Callable[[torch.Tensor], torch.Tensor],
    out_dim: int,
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    batch_size: int,
    device: torch.device | str | None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
    progress: bool,
) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    target = torch.device(device) if device is not None else default_device()
    model.to(target)
    layout = torch.channels_last if target.type == "cpu" else torch.contiguous_format
    out = torch.empty(images.shape[0], out_dim, dtype=torch.float32)
    starts = range(0, images.shape[0], batch_size)
    with memory_format(model, layout), torch.inference_mode():
        for start in progress_bar(starts, desc="inference", unit="batch", leave=False, disable=not progress):
            batch = images[start : start + batch_size].to(target, non_blocking=True)
            if augment is not None:
                batch = augment(batch)
            out[start : start + batch.shape[0]] = apply(normalize(batch, mean, std).contiguous(memory_format=layout)).float().cpu()
    return out


@contextmanager
def memory_format(model: Encoder, layout: torch.memory_format) -> Iterator[None]:
    """The model's 4-D weights in `layout` inside, back in the default layout on exit. Enter it
    outside inference mode: weights converted inside would become inference tensors, which
    training can no longer use.

    On a CPU, oneDNN's convolutions ran ResNet-32's eval-mode extraction 1.3× (1 thread) to 1.6×
    (2 threads) faster, LDMLR's train-mode one 1.5–1.6×, on channels-last tensors (measured);
    features agree with the default layout's to ~1e-6."""
    model.to(memory_format=layout)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)
