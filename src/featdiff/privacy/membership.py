"""Membership inference: attack scores, their ROC metrics with confidence intervals, and the
ceiling an (ε, δ) guarantee puts on them.

Scores are "higher = more likely a member". The attacks on what `ldmlr_dp` releases:
- `denoiser_loss_scores`: minus the denoising loss at chosen timesteps, averaged over noise draws
  from a fixed seed shared by every record (members and non-members see the same ε's), so the
  score differences come from the model, not from the draws; the timesteps are chosen on a
  held-out split (`best_timesteps`), never on the evaluated records;
- `offline_lira_scores`: LiRA without IN models (Carlini et al. 2022): a record's score
  standardised by the mean and spread of its scores under shadow models that did not train on it;
- `distance_scores`: minus the distance to the closest released pseudo-feature;
- `classifier_loss_scores`: minus a classifier's cross-entropy on the record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta as beta_distribution
from scipy.stats import rankdata
from torch import Tensor, nn

from featdiff.diffusion.objective import DenoisingObjective
from featdiff.seeding import named_generator

FPRS = (0.01, 0.001)
BOOTSTRAP_CHUNK = 64
"""Bootstrap resamples ranked at once: memory stays at 64 resampled score sets, whatever their count."""


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for a proportion."""
    if trials == 0:
        return 0.0, 1.0
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else float(beta_distribution.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta_distribution.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float) -> tuple[float, int]:
    """The TPR of the threshold that flags at most a `fpr` share of non-members, and the number
    of members above it (for its interval). FPR resolution is 1/#non-members."""
    allowed = math.floor(fpr * len(non_members))
    ranked = np.sort(non_members)[::-1]
    threshold = ranked[allowed] if allowed < len(ranked) else -np.inf
    hits = int((members > threshold).sum())
    return hits / len(members), hits


def mann_whitney_auc(members: np.ndarray, non_members: np.ndarray) -> np.ndarray:
    """ROC AUC of scores along the last axis (higher = member), for a batch of resamples at once:
    the Mann–Whitney U over n_members·n_non_members, a tie counting one half, as scikit-learn's
    `roc_auc_score` computes it one set at a time (whose input checks cost far more than the AUC)."""
    ranks = rankdata(np.concatenate([members, non_members], axis=-1), axis=-1)
    count, others = members.shape[-1], non_members.shape[-1]
    return (ranks[..., :count].sum(axis=-1) - count * (count + 1) / 2) / (count * others)


def attack_metrics(
    members: Sequence[float], non_members: Sequence[float], confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> dict:
    """AUC with a bootstrap interval, and TPR at 1 % and 0.1 % FPR with Clopper–Pearson intervals."""
    members, non_members = np.asarray(members, dtype=float), np.asarray(non_members, dtype=float)
    auc = float(mann_whitney_auc(members, non_members))
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        draws = [
            (rng.choice(members, len(members)), rng.choice(non_members, len(non_members)))
            for _ in range(min(BOOTSTRAP_CHUNK, resamples - start))
        ]
        boot[start : start + len(draws)] = mann_whitney_auc(np.stack([m for m, _ in draws]), np.stack([n for _, n in draws]))
    tail = (1 - confidence) / 2
    result = {"auc": auc, "auc_ci": [float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))]}
    result["members"], result["non_members"] = len(members), len(non_members)
    for fpr in FPRS:
        tpr, hits = tpr_at_fpr(members, non_members, fpr)
        result[f"tpr_at_{fpr:g}"] = {"tpr": tpr, "ci": list(clopper_pearson(hits, len(members), confidence))}
    return result


def tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """The largest TPR an (ε, δ)-DP mechanism allows at `fpr`: the (ε, δ) trade-off curve,
    min(e^ε·α + δ, 1 − e^−ε·(1 − δ − α)) (Kairouz et al. 2015)."""
    if math.isinf(epsilon):
        return 1.0
    return float(min(1.0, math.exp(epsilon) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr)))


def auc_bound(epsilon: float, delta: float, grid: int = 200_001) -> float:
    """The largest AUC allowed: the area under that trade-off curve (e^ε/(1 + e^ε) when δ = 0)."""
    if math.isinf(epsilon):
        return 1.0
    alpha = np.linspace(0.0, 1.0, grid)
    curve = np.minimum.reduce([np.ones_like(alpha), math.exp(epsilon) * alpha + delta, 1 - math.exp(-epsilon) * (1 - delta - alpha)])
    return float(np.trapezoid(curve, alpha))


@torch.no_grad()
def denoiser_loss_scores(
    model: nn.Module,
    records: Tensor,
    labels: Tensor,
    *,
    objective: DenoisingObjective,
    timesteps: Sequence[int],
    draws: int,
    seed: int,
    stream: str = "membership loss draws",
    batch_size: int = 4096,
) -> Tensor:
    """−(mean denoising loss over `timesteps` × `draws`) per record, (N,). Draw j at timestep t
    uses the same ε for every record (from the named stream `stream` of `seed`), shared by
    members and non-members, and by every model scored with the same seed and stream."""
    generator = named_generator(seed, stream)
    noise = torch.randn(len(timesteps), draws, records.shape[1], generator=generator, dtype=records.dtype)
    t = torch.tensor(list(timesteps)).repeat_interleave(draws)
    shared = noise.flatten(0, 1)
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(records), batch_size):
        x0 = records[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        b = len(x0)
        losses = objective.loss(model, x0, y, t.expand(b, -1).to(device), shared.expand(b, -1, -1).to(device))
        scores.append(-losses.cpu())
    return torch.cat(scores)


def best_timesteps(scores_by_timestep: dict[int, tuple[np.ndarray, np.ndarray]], count: int = 1) -> list[int]:
    """The `count` timesteps whose scores separate held-out members from non-members best (AUC)."""
    aucs = {t: float(mann_whitney_auc(np.asarray(m, dtype=float), np.asarray(n, dtype=float))) for t, (m, n) in scores_by_timestep.items()}
    return sorted(aucs, key=aucs.get, reverse=True)[:count]


def offline_lira_scores(target: np.ndarray, shadow_out: np.ndarray, shadow_mask: np.ndarray, global_variance: bool = True) -> np.ndarray:
    """Offline LiRA: (s − μ_out)/σ_out per record, from shadow scores (S, N) of models whose
    `shadow_mask` (S, N) is False where the model did not train on the record. With few shadow
    models a global σ_out (over records) is steadier than per-record ones (Carlini et al. §IV)."""
    out = np.where(shadow_mask, np.nan, shadow_out)
    if np.isnan(out).all(axis=0).any():
        raise ValueError("some records are in every shadow model's training set: train more shadow models")
    mean = np.nanmean(out, axis=0)
    if global_variance:
        spread = np.nanstd(out - mean[None, :])
        return (target - mean) / max(spread, 1e-12)
    return (target - mean) / np.maximum(np.nanstd(out, axis=0), 1e-12)


def distance_scores(records: Tensor, released: Tensor, batch_size: int = 2048) -> Tensor:
    """−(distance to the closest released pseudo-feature) per record, (N,)."""
    nearest = [torch.cdist(records[i : i + batch_size], released).min(dim=1).values for i in range(0, len(records), batch_size)]
    return -torch.cat(nearest)


@torch.no_grad()
def classifier_loss_scores(classifier: nn.Module, records: Tensor, labels: Tensor) -> Tensor:
    """−CE(classifier(x), y) per record, (N,)."""
    device = next(classifier.parameters()).device
    return -F.cross_entropy(classifier(records.to(device)), labels.to(device), reduction="none").cpu()
