"""Diagnostics for the 'two clouds' hypothesis: do pseudo-features sit where current real ones do?

Per class: the Fréchet distance between Gaussians fitted to pseudo and real features, the distance
between their prototypes, and each one's intra-class spread; overall: feature norm and per-class
spread of the real features (a collapsing encoder shows both falling), and AID/OOD fractions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from featdiff.statistics import ClassGeometry, band_fractions, bands, class_means_and_covariances, distance_ratios, trace_radius


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> Tensor:
    """‖μa − μb‖² + tr(Σa + Σb − 2(Σa^½ Σb Σa^½)^½), in float64; batched over leading dims."""
    mean_a, cov_a, mean_b, cov_b = (x.to(torch.float64) for x in (mean_a, cov_a, mean_b, cov_b))
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    trace = torch.diagonal(cov_a + cov_b - 2 * cross, dim1=-2, dim2=-1).sum(-1)
    return (mean_a - mean_b).square().sum(-1) + trace


def compare(
    real: Tensor, real_labels: Tensor, pseudo: Tensor, pseudo_labels: Tensor, num_classes: int, id_edge: float = 1.0, aid_edge: float = 2.0
) -> dict:
    """Per-class and overall comparison of pseudo-features against current real features."""
    real, pseudo = real.double(), pseudo.double()
    ones_real = torch.ones(real_labels.shape[0], dtype=torch.float64)
    ones_pseudo = torch.ones(pseudo_labels.shape[0], dtype=torch.float64)
    real_mean, real_cov, real_mass = class_means_and_covariances(real, real_labels, ones_real, num_classes)
    pseudo_mean, pseudo_cov, pseudo_mass = class_means_and_covariances(pseudo, pseudo_labels, ones_pseudo, num_classes)
    both = (real_mass >= 2) & (pseudo_mass >= 2)
    frechet = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    frechet[both] = frechet_distance(pseudo_mean[both], pseudo_cov[both], real_mean[both], real_cov[both])
    prototype_gap = (pseudo_mean - real_mean).norm(dim=1).masked_fill(~both, float("nan"))
    geometry = ClassGeometry.of(real, real_labels, num_classes, radius="max")
    band = bands(distance_ratios(pseudo, pseudo_labels, geometry), id_edge, aid_edge)
    return {
        "frechet": frechet.tolist(),
        "prototype_gap": prototype_gap.tolist(),
        "real_spread": trace_radius(real_cov).tolist(),
        "pseudo_spread": trace_radius(pseudo_cov).tolist(),
        "real_norm": float(real.norm(dim=1).mean()),
        "pseudo_norm": float(pseudo.norm(dim=1).mean()),
        "mean_frechet": float(frechet[both].mean()) if bool(both.any()) else float("nan"),
        "bands": band_fractions(band),
    }


def plot_history(history: list[dict], path: Path) -> None:
    """Mean Fréchet distance, prototype gap and feature norm per epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [entry["epoch"] for entry in history]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(epochs, [entry["mean_frechet"] for entry in history], marker="o")
    axes[0].set_title("Fréchet distance, pseudo vs real (class mean)")
    gaps = [torch.tensor(entry["prototype_gap"]).nanmean().item() for entry in history]
    axes[1].plot(epochs, gaps, marker="o")
    axes[1].set_title("prototype gap (class mean)")
    axes[2].plot(epochs, [entry["real_norm"] for entry in history], marker="o", label="real")
    axes[2].plot(epochs, [entry["pseudo_norm"] for entry in history], marker="o", label="pseudo")
    axes[2].set_title("feature norm")
    axes[2].legend()
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_two_clouds(real: Tensor, real_labels: Tensor, pseudo: Tensor, pseudo_labels: Tensor, classes: list[int], path: Path) -> None:
    """Real and pseudo features of a few classes projected on the real features' top two
    principal directions: stale pseudo-features show up as a second cloud beside the real one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = real.double().mean(0)
    _, _, basis = torch.pca_lowrank(real.double() - centre, q=2, center=False)
    figure, axis = plt.subplots(figsize=(5, 5))
    colours = plt.get_cmap("tab10")
    for index, label in enumerate(classes):
        for data, labels, marker, alpha in ((real, real_labels, "o", 0.35), (pseudo, pseudo_labels, "x", 0.6)):
            points = (data[labels == label].double() - centre) @ basis
            kind = "real" if marker == "o" else "pseudo"
            axis.scatter(points[:, 0], points[:, 1], s=8, marker=marker, alpha=alpha, color=colours(index % 10), label=f"{label} {kind}")
    axis.legend(fontsize=7, markerscale=2)
    axis.set_title("real (o) vs pseudo (x) features, PCA of real")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
