"""Stage 1: training an encoder and its classifier with cross-entropy on the long-tailed images.

The whole training set sits on the compute device as uint8; each batch is gathered by index,
augmented as a batch and normalised there, so no DataLoader workers or per-image Python run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from featdiff.config import EncoderConfig, FinetuneConfig
from featdiff.progress import progress

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Normalize = Callable[[torch.Tensor], torch.Tensor]


def encoder_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()


def learning_rate(epoch: int, config: EncoderConfig | FinetuneConfig) -> float:
    """Linear warm-up to `lr`, then ×0.1 at each milestone (the standard CIFAR-LT recipe)."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    return config.lr * 0.1 ** sum(epoch >= m for m in config.milestones)


def train_encoder(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EncoderConfig,
    augment: Augment,
    normalize: Normalize,
    generator: torch.Generator,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    log: Callable[[int, float], None] | None = None,
) -> None:
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        start_epoch = resume["epoch"]
    n = labels.numel()
    model.train()
    for epoch in progress(range(start_epoch, config.epochs), desc="encoder", initial=start_epoch, total=config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch, config)
        order = torch.randperm(n, generator=generator, device=generator.device).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            batch = normalize(augment(images[index], generator))
            total += encoder_step(model, optimizer, batch, labels[index]) * index.numel()
        if log is not None:
            log(epoch + 1, float(total) / n)
        if checkpoint is not None and epoch + 1 < config.epochs:
            checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                }
            )
    model.eval()
