"""Channels-last, bf16 autocast and torch.compile for the encoder, switched on around a training
loop without touching the loop or the model class.

The encoder's `features` is swapped for a wrapper for the duration of the `with` block and put
back afterwards, so checkpoints, copies and evaluation always see the plain fp32 module. The
wrapper returns fp32 features: everything after the encoder (classifier, diffusion branch,
few-step sampling) keeps full precision, which the x̂0 clipping and the 1/√ᾱ factors need.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from featdiff.config import ComputeConfig


@contextmanager
def accelerated(encoder: nn.Module, config: ComputeConfig, device: torch.device) -> Iterator[nn.Module]:
    """The speed settings on CUDA; on any other device the encoder is left as it is."""
    if device.type != "cuda":
        yield encoder
        return
    with speed_settings(encoder, config, device.type):
        yield encoder


@contextmanager
def speed_settings(encoder: nn.Module, config: ComputeConfig, device_type: str) -> Iterator[nn.Module]:
    """The settings on `device_type` unconditionally (tests use it on the CPU)."""
    plain = encoder.features
    if config.channels_last:
        encoder.to(memory_format=torch.channels_last)

    def features(images: torch.Tensor) -> torch.Tensor:
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
            return plain(images).float()

    encoder.features = torch.compile(features) if config.compile else features
    try:
        yield encoder
    finally:
        del encoder.features
        if config.channels_last:
            encoder.to(memory_format=torch.contiguous_format)
