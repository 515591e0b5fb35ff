"""Fine-tuning a trained encoder and its classifier with cross-entropy (the `ce_finetune` control).

`last_stage` trains only the last residual stage and the fc: earlier layers keep their weights and
their BatchNorm statistics (they stay in eval mode), which makes an epoch cheaper and keeps the
features close to the ones any frozen-encoder method saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featdiff.config import FinetuneConfig

FROZEN_IN_LAST_STAGE = ("conv1", "bn1", "layer1", "layer2")


def configure_trainable(encoder: nn.Module, trainable: Literal["all", "last_stage"]) -> None:
    """Set requires_grad on the encoder's parameters for the chosen fine-tuning scope."""
    for name, parameter in encoder.named_parameters():
        frozen = trainable == "last_stage" and name.split(".")[0] in FROZEN_IN_LAST_STAGE
        parameter.requires_grad_(not frozen)


def set_train_mode(encoder: nn.Module, trainable: Literal["all", "last_stage"]) -> None:
    """train() on the trainable part, eval() on the frozen one (so its BN statistics do not move)."""
    encoder.train()
    if trainable == "last_stage":
        for name in FROZEN_IN_LAST_STAGE:
            module = getattr(encoder, name, None)
            if module is not None:
                module.eval()


def trainable_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in module.parameters() if p.requires_grad)


def make_encoder_optimizer(encoder: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(trainable_parameters(encoder)), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def finetune_lr(progress: float, config: FinetuneConfig) -> float:
    """Cosine decay from lr to 0 over the fine-tuning budget (progress in [0, 1])."""
    return 0.5 * config.lr * (1 + torch.cos(torch.tensor(torch.pi * min(max(progress, 0.0), 1.0))).item())


def ce_step(encoder: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(encoder(images), labels)
    loss.backward()
    optimizer.step()
    return {"real": float(loss.detach())}
