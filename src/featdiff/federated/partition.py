"""Long-tailed records spread over clients by a per-class Dirichlet(α), the Fed-LT protocol of
CReFF and its successors: each class's records are shuffled and cut among the clients in
proportions drawn from Dir(α·1). Small α puts most of a class on a few clients, so clients differ
in class mix and size; a tail class ends up on very few of them.

A draw that leaves a client with fewer than `min_records` records is redrawn (as NIID-Bench
does), from the same seeded stream, so a partition is a function of (labels, clients, α, seed).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from featdiff.errors import UserError

MAX_DRAWS = 1000


def dirichlet_partition(labels: Tensor, clients: int, alpha: float, seed: int, min_records: int = 1) -> list[Tensor]:
    """Record indices per client (sorted), disjoint and covering every record."""
    if alpha <= 0:
        raise UserError(f"config key 'federated.alpha' must be > 0, got {alpha:g}: the Dirichlet concentration")
    if clients < 1:
        raise UserError(f"config key 'federated.clients' must be >= 1, got {clients}")
    total = len(labels)
    if clients * min_records > total:
        raise UserError(
            f"config key 'federated.clients' = {clients} needs at least {clients * min_records} records "
            f"({min_records} per client), the training set has {total}: lower federated.clients"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels.numpy() == c) for c in range(int(labels.max()) + 1)]
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for indices in by_class:
            shuffled = rng.permutation(indices)
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(int)
            for client, piece in enumerate(np.split(shuffled, cuts)):
                parts[client].append(piece)
        sizes = [sum(len(piece) for piece in pieces) for pieces in parts]
        if min(sizes) >= min_records:
            return [torch.from_numpy(np.sort(np.concatenate(pieces))) for pieces in parts]
    raise UserError(
        f"no Dirichlet(α = {alpha:g}) split of {total} records over {clients} clients gave every client "
        f"{min_records} record(s) in {MAX_DRAWS} draws: raise federated.alpha or lower federated.clients"
    )


def client_counts(parts: list[Tensor], labels: Tensor, num_classes: int) -> Tensor:
    """(clients, classes) record counts: what a run saves, and what weighted averaging uses."""
    return torch.stack([torch.bincount(labels[part], minlength=num_classes) for part in parts])
