"""Fine-tuning a trained encoder and its classifier with cross-entropy (the `ce_finetune` control).

`last_stage` trains only the last residual stage and the fc: earlier layers keep their weights and
their BatchNorm statistics (they stay in eval mode), which makes an epoch cheaper and keeps the
features close to the ones any frozen-encoder method saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from featdiff.config import FinetuneConfig
from featdiff.distributed import shard
from featdiff.training.encoder import cross_entropy_loss, learning_rate
from featdiff.training.loop import apply_update, run_steps
from featdiff.training.state import ShuffledBatches, TrainState

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


def finetune_lr(fraction: float, config: FinetuneConfig) -> float:
    """The learning rate after `fraction` (in [0, 1]) of the budget: cosine decay from lr to 0,
    or stage 1's warm-up and step decay, changed once per epoch."""
    fraction = min(max(fraction, 0.0), 1.0)
    if config.schedule == "step":
        return learning_rate(math.floor(fraction * config.epochs), config)
    return 0.5 * config.lr * (1 + math.cos(math.pi * fraction))


def finetune_state(encoder: nn.Module, size: int, config: FinetuneConfig, generator: torch.Generator) -> TrainState:
    """Trainable scope set, optimizer over it, batches of `config.batch_size`."""
    configure_trainable(encoder, config.trainable)
    return TrainState(
        model=encoder,
        optimizers={"encoder": make_encoder_optimizer(encoder, config)},
        generators={"data": generator},
        batches=ShuffledBatches(size, config.batch_size, generator),
    )


def logit_offsets(labels: Tensor, config: FinetuneConfig, prior: Tensor | None = None) -> Tensor | None:
    """log π of the training labels (or of `prior`) for `finetune.loss: logit_adjusted`, else None."""
    if config.loss != "logit_adjusted":
        return None
    if prior is None:
        prior = torch.bincount(labels.cpu()).double()
    prior = prior.double().clamp_min(1e-12)
    return torch.log(prior / prior.sum()).float().to(labels.device)


def train_finetune(
    state: TrainState,
    images: Tensor,
    labels: Tensor,
    config: FinetuneConfig,
    augment: Callable[[Tensor, torch.Generator], Tensor],
    normalize: Callable[[Tensor], Tensor],
    checkpoint: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Cross-entropy fine-tuning for `config.epochs` epochs with the same batches, augmentation
    and learning-rate schedule as the end-to-end trainer, so the two cost and see the same."""
    encoder = state.model
    device = next(encoder.parameters()).device
    images, labels = images.to(device), labels.to(device)
    generator = state.generators["data"]
    optimizer = state.optimizers["encoder"]
    total = config.epochs * state.batches.steps_per_epoch

    offsets = logit_offsets(labels, config)

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        index = index.to(device)
        set_train_mode(encoder, config.trainable)
        batch, batch_labels = shard(normalize(augment(images[index], generator)), labels[index])  # drawn for the whole batch
        loss = cross_entropy_loss(encoder, batch, batch_labels, offsets)
        apply_update(loss, optimizer)
        return {"real": loss.detach()}

    def epoch_end(state: TrainState, means: dict[str, float]) -> None:
        encoder.eval()
        if on_epoch_end is not None:
            on_epoch_end(int(means["epoch"]), means)

    run_steps(
        state,
        total,
        step,
        lr_at=lambda s: finetune_lr(s / total, config),
        on_epoch_end=epoch_end,
        checkpoint=checkpoint,
        checkpoint_every_epochs=1,
        log_every=10**9,
        desc="ce_finetune",
    )
    encoder.eval()
    return state.history
