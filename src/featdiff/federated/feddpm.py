"""FedDDPM's and FedDDPM+'s server-side decisions (Peng et al., IEEE TCCN 2025), as pure functions.

The paper's algorithm box is not public (../shared/reference/fl.md §1.2); these are featdiff's
reconstruction, each open detail a config knob:
- the auxiliary set is drawn from the warm-up uploads in proportion to client sizes
  (`auxiliary_counts`);
- QUICK-TEST flags slow learning when the relative improvement of a fixed held-out auxiliary
  loss (fixed timesteps and noise, so the number is deterministic) stays below ε for P rounds
  (`learning_is_slow`); FedDDPM+ then fine-tunes once on the auxiliary set and stops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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


def relative_improvements(losses: Sequence[float]) -> list[float]:
    """(L_{r−1} − L_r) / L_{r−1} for consecutive rounds."""
    return [(previous - current) / max(abs(previous), 1e-12) for previous, current in zip(losses, losses[1:], strict=False)]


def learning_is_slow(losses: Sequence[float], threshold: float, patience: int) -> bool:
    """QUICK-TEST: the last `patience` relative improvements of the held-out auxiliary loss all
    fell below `threshold`."""
    gains = relative_improvements(losses)
    return len(gains) >= patience and all(gain < threshold for gain in gains[-patience:])
