"""Stage 1: training an encoder and its classifier with cross-entropy on the long-tailed images.

The whole training set sits on the compute device as uint8; each batch is gathered by index,
augmented as a batch and normalised there, so no DataLoader workers or per-image Python run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featdiff.config import EncoderConfig, FinetuneConfig
from featdiff.distributed import shard
from featdiff.training.loop import apply_update, run_steps
from featdiff.training.state import ShuffledBatches, TrainState

Augment = Callable[[Tensor, torch.Generator], Tensor]
Normalize = Callable[[Tensor], Tensor]


def cross_entropy_loss(model: nn.Module, images: Tensor, labels: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Cross-entropy of the model's logits, plus `offsets` (τ·log π for the logit-adjusted loss)."""
    logits = model(images)
    return F.cross_entropy(logits if offsets is None else logits + offsets, labels)


def learning_rate(epoch: int, config: EncoderConfig | FinetuneConfig) -> float:
    """Linear warm-up to `lr`, then ×0.1 at each milestone (the standard CIFAR-LT recipe)."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    return config.lr * 0.1 ** sum(epoch >= m for m in config.milestones)


def encoder_state(model: nn.Module, size: int, config: EncoderConfig, generator: torch.Generator) -> TrainState:
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return TrainState(
        model=model,
        optimizers={"encoder": optimizer},
        generators={"data": generator},
        batches=ShuffledBatches(size, config.batch_size, generator),
    )


def train_encoder(
    state: TrainState,
    images: Tensor,
    labels: Tensor,
    config: EncoderConfig,
    augment: Augment,
    normalize: Normalize,
    checkpoint: Callable[[dict], None] | None = None,
    log: Callable[[int, float], None] | None = None,
) -> TrainState:
    """`config.epochs` epochs of CE with the per-epoch warm-up and step schedule; the model is
    left in eval mode."""
    model = state.model
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    generator = state.generators["data"]
    optimizer = state.optimizers["encoder"]
    per_epoch = state.batches.steps_per_epoch

    def step(state: TrainState, index: Tensor) -> dict[str, Tensor]:
        index = index.to(device)
        model.train()
        batch, batch_labels = shard(normalize(augment(images[index], generator)), labels[index])  # drawn for the whole batch
        loss = cross_entropy_loss(model, batch, batch_labels)
        apply_update(loss, optimizer)
        return {"loss": loss.detach()}

    run_steps(
        state,
        config.epochs * per_epoch,
        step,
        lr_at=lambda s: learning_rate(s // per_epoch, config),
        on_epoch_end=None if log is None else lambda state, means: log(int(means["epoch"]), means["loss"]),
        checkpoint=checkpoint,
        checkpoint_every_epochs=1,
        log_every=10**9,
        desc="encoder",
    )
    model.eval()
    return state
