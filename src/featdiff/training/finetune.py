"""Fine-tuning a trained encoder and its classifier with cross-entropy (the `ce_finetune` control).

`last_stage` trains only the last residual stage and the fc: earlier layers keep their weights and
their BatchNorm statistics (they stay in eval mode), which makes an epoch cheaper and keeps the
features close to the ones any frozen-encoder method saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featdiff.config import FinetuneConfig
from featdiff.progress import progress
from featdiff.training.encoder import learning_rate

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


ADAM_CLASSIFIER_WEIGHT_DECAY = 1e-5
"""LDMLR's stage-3 value for its Adam-trained classifier."""


class JointOptimizer:
    """Several optimizers stepped, zeroed and checkpointed as one (SGD for the encoder's body,
    Adam for its classifier), so the step functions need not know there are two."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)


EncoderOptimizer = torch.optim.Optimizer | JointOptimizer


def make_encoder_optimizer(encoder: nn.Module, config: FinetuneConfig) -> EncoderOptimizer:
    """SGD for the trainable body; for the classifier SGD or Adam (`classifier_optimizer`), its
    learning rate scaled by `classifier_lr_scale`: the classifier is what re-balances, and it may
    need other steps than the features."""
    classifier = {id(p) for p in encoder.fc.parameters()}
    body = [p for p in trainable_parameters(encoder) if id(p) not in classifier]
    head = [p for p in trainable_parameters(encoder) if id(p) in classifier]
    sgd = {"lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay}
    if config.classifier_optimizer == "adam":
        body_optimizer = torch.optim.SGD([{"params": body, "lr_scale": 1.0}], **sgd)
        head_optimizer = torch.optim.Adam(
            [{"params": head, "lr_scale": config.classifier_lr_scale}], lr=config.lr, weight_decay=ADAM_CLASSIFIER_WEIGHT_DECAY
        )
        return JointOptimizer(body_optimizer, head_optimizer)
    groups = [{"params": body, "lr_scale": 1.0}, {"params": head, "lr_scale": config.classifier_lr_scale}]
    return torch.optim.SGD([g for g in groups if g["params"]], **sgd)


def set_learning_rates(optimizer: EncoderOptimizer, fraction: float, config: FinetuneConfig) -> None:
    for group in optimizer.param_groups:
        group["lr"] = finetune_lr(fraction, config) * group["lr_scale"]


def finetune_lr(fraction: float, config: FinetuneConfig) -> float:
    """The learning rate after `fraction` (in [0, 1]) of the budget: cosine decay from lr to 0,
    or stage 1's warm-up and step decay, changed once per epoch."""
    fraction = min(max(fraction, 0.0), 1.0)
    if config.schedule == "step":
        return learning_rate(math.floor(fraction * config.epochs), config)
    return 0.5 * config.lr * (1 + math.cos(math.pi * fraction))


def ce_step(encoder: nn.Module, optimizer: EncoderOptimizer, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(encoder(images), labels)
    loss.backward()
    optimizer.step()
    return {"real": float(loss.detach())}


def train_finetune(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: FinetuneConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    normalize: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Cross-entropy fine-tuning for `config.epochs` epochs with the same batches, augmentation
    and learning-rate schedule as the end-to-end trainer, so the two cost and see the same."""
    device = next(encoder.parameters()).device
    images, labels = images.to(device), labels.to(device)
    configure_trainable(encoder, config.trainable)
    optimizer = make_encoder_optimizer(encoder, config)
    n = labels.numel()
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    start_epoch, history = 0, []
    if resume is not None:
        encoder.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        start_epoch, history = resume["epoch"], list(resume["history"])
    for epoch in range(start_epoch, config.epochs):
        order = torch.randperm(n, generator=generator, device=generator.device).to(device)
        started, total = time.perf_counter(), 0.0
        for step in progress(range(steps_per_epoch), desc=f"ce_finetune epoch {epoch + 1}/{config.epochs}", unit="step"):
            set_learning_rates(optimizer, (epoch * steps_per_epoch + step) / total_steps, config)
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            set_train_mode(encoder, config.trainable)
            total += ce_step(encoder, optimizer, normalize(augment(images[index], generator)), labels[index])["real"]
        history.append({"real": total / steps_per_epoch, "epoch": epoch + 1, "epoch_s": time.perf_counter() - started})
        encoder.eval()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history[-1])
        if checkpoint is not None and epoch + 1 < config.epochs:
            checkpoint(
                {
                    "model": encoder.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                    "history": history,
                }
            )
    encoder.eval()
    return history
