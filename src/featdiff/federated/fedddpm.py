"""FedDDPM+'s QUICK-TEST (Peng et al., IEEE TCCN 2025), as pure functions.

The paper's algorithm box is not public (../shared/reference/fl.md §1.2); this is featdiff's
reconstruction, each open detail a config knob: QUICK-TEST flags slow learning when the relative
improvement of a fixed held-out auxiliary loss (fixed timesteps and noise, so the number is
deterministic) stays below ε for P rounds (`learning_is_slow`); FedDDPM+ then fine-tunes once on
the auxiliary set and stops (featdiff.federated.strategies.fedddpm_plus).
"""

from __future__ import annotations

from collections.abc import Sequence


def relative_improvements(losses: Sequence[float]) -> list[float]:
    """(L_{r−1} − L_r) / L_{r−1} for consecutive rounds."""
    return [(previous - current) / max(abs(previous), 1e-12) for previous, current in zip(losses, losses[1:], strict=False)]


def learning_is_slow(losses: Sequence[float], threshold: float, patience: int) -> bool:
    """QUICK-TEST: the last `patience` relative improvements of the held-out auxiliary loss all
    fell below `threshold`."""
    gains = relative_improvements(losses)
    return len(gains) >= patience and all(gain < threshold for gain in gains[-patience:])
