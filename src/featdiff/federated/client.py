"""A federated client's local work on its own (scaled) feature records, through the training
core: the same state, step and loop as centralised LDMLR, never a loss or loop of its own.

`local_update` is FedAvg's client: from the broadcast weights, `steps` optimiser steps of the
shared denoising objective at a constant learning rate with a fresh optimizer (no optimizer
state crosses rounds), batches no larger than the client's records.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from featdiff.config import DiffusionConfig
from featdiff.diffusion.schedules import NoiseSchedule
from featdiff.training.denoiser import denoiser_state, denoiser_step
from featdiff.training.loop import run_steps


def local_update(
    model: nn.Module,
    features: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    config: DiffusionConfig,
    steps: int,
    *,
    data: torch.Generator,
    draws: torch.Generator,
) -> tuple[dict[str, Tensor], float]:
    """The client's weights after `steps` local steps from `model`'s, and its mean training loss;
    `data` orders the records, `draws` draws the diffusion's (t, ε)."""
    if len(labels) == 0:
        raise ValueError("a client without records cannot train")
    local = config.model_copy(update={"batch_size": min(config.batch_size, len(labels))})
    state = denoiser_state(model, len(labels), local, data, draws=draws)
    step = denoiser_step(state, features, labels, schedule, local)
    losses: list[Tensor] = []

    def counted(state, index: Tensor) -> dict[str, Tensor]:
        values = step(state, index)
        losses.append(values["loss"])
        return values

    run_steps(state, steps, counted, lr_at=lambda _: local.lr, desc="client", log_every=steps)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}, float(torch.stack(losses).mean())
