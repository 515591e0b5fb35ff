"""The denoiser strategies' warm-up as pure decisions: how many pseudo-features each client
contributes to the auxiliary set, and when another run's warm-up can stand in for this one's.

The auxiliary set is drawn from the warm-up uploads in proportion to client class counts
(`auxiliary_counts`, featdiff's reconstruction of FedDDPM's unpublished detail). A warm-up is
the costliest stage and identical across the algorithms compared on one federation, so
`federated.warmup_from` reuses a finished one, after checking that it ran what this run would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from featdiff.config import RunConfig, private_training
from featdiff.errors import UserError
from featdiff.runs import Run

WARMUP_KEYS = (
    "seed",
    "features",
    "clients",
    "alpha",
    "min_client_records",
    "warmup",
    "aux_per_class",
    "quick_test_holdout",
    "diffusion",
    "privacy",
)


def auxiliary_counts(client_class_counts: Tensor, total_per_class: int) -> Tensor:
    """(clients, classes) pseudo-features to draw from each client's upload: each class's total
    split over the clients holding it in proportion to their counts (largest remainders, so every
    class sums to exactly `total_per_class` when anyone holds it)."""
    counts = client_class_counts.to(torch.float64)
    held = counts.sum(0)
    share = counts / held.clamp_min(1.0) * total_per_class
    floor = share.floor()
    remainder = (total_per_class - floor.sum(0)).where(held > 0, torch.zeros_like(held)).long()
    order = (share - floor).argsort(dim=0, descending=True)
    extra = torch.zeros_like(floor)
    for c in range(counts.shape[1]):
        extra[order[: remainder[c], c], c] = 1.0
    return (floor + extra).long()


def warmup_signature(config: RunConfig) -> dict:
    """Everything a warm-up's result depends on (private clients also plan for the rounds)."""
    fed = config.federated
    return {
        "seed": config.seed,
        "features": fed.features,
        "clients": fed.clients,
        "alpha": fed.alpha,
        "min_client_records": fed.min_client_records,
        "warmup": (fed.warmup_steps, fed.warmup_upload, (fed.rounds, fed.local_steps) if private_training(config) else None),
        "aux_per_class": fed.aux_per_class,
        "quick_test_holdout": fed.quick_test_holdout,
        "diffusion": config.diffusion.model_dump(),
        "privacy": config.privacy.model_dump(),
    }


def reuse_warmup(run: Run) -> dict[str, Tensor]:
    """Copy the finished warm-up of `federated.warmup_from` into `run`, after checking that it
    ran what `run` would."""
    source = Run.open(Path(run.config.federated.warmup_from))
    if not source.stage_done("warmup"):
        raise UserError(f"federated.warmup_from = {source.directory} has no finished warm-up: point it at a run that got past it")
    theirs, ours = warmup_signature(source.config), warmup_signature(run.config)
    differences = [key for key in WARMUP_KEYS if theirs[key] != ours[key]]
    if differences:
        raise UserError(
            f"federated.warmup_from = {source.directory} ran another warm-up (it differs in {', '.join(differences)}): "
            "reuse a run with the same settings, or leave federated.warmup_from empty"
        )
    warm = source.load_tensors("warmup.safetensors", stage="warmup")
    run.save_tensors("warmup.safetensors", warm)
    run.mark_done("warmup", **source.stage_info("warmup"), reused_from=str(source.directory))
    return warm
