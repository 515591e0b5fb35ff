"""Weighted federated averaging of model states, with class rows averaged by who holds the class.

Plain FedAvg weights every parameter by client size. A class-conditional denoiser's embedding row
for class c only receives gradient on clients holding c; averaging it with the untouched rows of
every other client dilutes a tail class by about (holders of c)/(clients sampled). Weighting row c
by each client's count of class c averages only the clients that trained it; a row nobody in the
round holds keeps the size-weighted average (all of them are the broadcast row, unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def weighted_average(states: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Σ_k w_k·state_k / Σ_k w_k for every floating-point entry (others taken from the first state)."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("the weights must have a positive sum")
    shares = torch.tensor(weights, dtype=torch.float64) / total
    averaged = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            averaged[name] = first.clone()
            continue
        stacked = torch.stack([state[name].to(torch.float64) for state in states])
        averaged[name] = torch.tensordot(shares, stacked, dims=1).to(first.dtype)
    return averaged


def class_row_average(
    states: Sequence[dict[str, Tensor]], sizes: Sequence[float], class_counts: Tensor, key: str = "class_emb.weight"
) -> dict[str, Tensor]:
    """`weighted_average` by client size, except the rows of `key` for classes 0..C−1, which are
    averaged with weights class_counts[k, c] (clients × classes). Rows beyond C (the null class)
    and classes no client in the round holds keep the size weighting."""
    averaged = weighted_average(states, sizes)
    counts = class_counts.to(torch.float64)
    held = counts.sum(0) > 0
    rows = torch.stack([state[key].to(torch.float64) for state in states])[:, : counts.shape[1]]
    by_class = (rows * counts[:, :, None]).sum(0) / counts.sum(0).clamp_min(1e-12)[:, None]
    table = averaged[key].clone()
    table[: counts.shape[1]][held] = by_class[held].to(table.dtype)
    averaged[key] = table
    return averaged
