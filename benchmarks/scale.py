"""Benchmark: featdiff's feature-space stages at ImageNet-LT and iNaturalist-2018 shape (issue 19).

Synthetic long-tailed features from a class-Gaussian mixture with class-dependent (diagonal)
covariances, generated batch by batch from the class parameters (never materialised), shaped like
- ImageNet-LT: 1,000 classes, counts from 1,280 down to 5 (a power law), 115.8k records, D ∈ {512, 2048};
- iNaturalist 2018: 8,142 classes, 437.5k records, D = 2048.
Per stage, wall time and peak memory (the process's resident-set high-water mark, reset before
each stage):
- statistics: the per-class sufficient statistics (count, sum, outer products), streamed in chunks;
- denoiser: LDMLR's stage-2 training steps (batch 512), per 1,000 steps;
- sampling: DDIM (50 steps) per 100,000 pseudo-features, streamed to disk in chunks;
- classifier: one epoch of the linear head (batch 1,024, Adam) over N records and C classes;
- streamed fill: the library's `Generator.write_fill` (pseudo-features sampled chunk by chunk into a
  safetensors file) and one head epoch over the memory-mapped file, with the peak of the process's
  anonymous memory (what it holds itself, apart from the file's pages) against the pseudo count.
Growth exponents (log-log slope) in N, C and D come from three sizes each at ImageNet-LT shape,
and in the pseudo count from three counts; sampling throughput is set against the measured fp32
matrix-multiply peak.

    python benchmarks/scale.py [--threads 1]      # ~9 min on one thread of this 2-core machine

Writes benchmarks/results/scale.{json,md} and scale.png (time against size, log-log).
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import matmul_peak_gflops
from torch.utils.flop_counter import FlopCounterMode

from featdiff.api import Generator, open_features
from featdiff.config import ClassifierConfig, DiffusionConfig, config_from_dict
from featdiff.diffusion.sampling import SamplerSettings
from featdiff.diffusion.scaling import Standardizer
from featdiff.generation.pseudo import FeatureGenerator, build_denoiser, schedule_for
from featdiff.report import write_report
from featdiff.seeding import initialise, named_generator
from featdiff.statistics import SufficientStatistics
from featdiff.training.classifier import ClassifierLoss, WeightedFeatures, classifier_state, make_classifier_optimizer, train_classifier
from featdiff.training.denoiser import denoiser_state, train_denoiser

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = {
    "imagenet-lt": {"classes": 1000, "records": 115_846, "largest": 1280, "smallest": 5},
    "inaturalist-2018": {"classes": 8142, "records": 437_513, "largest": 1000, "smallest": 2},
}


def long_tailed_counts(classes: int, records: int, largest: int, smallest: int) -> torch.Tensor:
    """n_c = smallest + (largest − smallest)·(1 − c/(C−1))^a, from `largest` down to `smallest`,
    with the exponent a that gives `records` in all (bisection)."""
    position = torch.linspace(0, 1, classes, dtype=torch.float64)

    def counts(a: float) -> torch.Tensor:
        return (smallest + (largest - smallest) * (1 - position) ** a).round().long()

    low, high = 0.0, 100.0
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if int(counts(middle).sum()) > records else (low, middle)
    return counts(high)


class Mixture:
    """A class-Gaussian mixture with diagonal, class-dependent covariances, drawn batch by batch."""

    def __init__(self, counts: torch.Tensor, dim: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.counts, self.dim = counts, dim
        self.means = torch.randn(len(counts), dim, generator=generator) * 2
        self.scales = 0.5 + torch.rand(len(counts), dim, generator=generator)
        self.labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.generator = generator

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self.labels[rows]
        noise = torch.randn(len(rows), self.dim, generator=self.generator)
        return (self.means[labels] + self.scales[labels] * noise).relu(), labels

    def chunks(self, size: int):
        for start in range(0, len(self.labels), size):
            yield self.batch(torch.arange(start, min(start + size, len(self.labels))))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current resident set


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(stage: Callable[[], float]) -> dict[str, float]:
    """Run `stage` (which returns its own work-normalised seconds) and record the peak memory."""
    reset_peak()
    started = time.perf_counter()
    normalised = stage()
    return {"seconds": normalised, "wall_s": time.perf_counter() - started, "peak_mb": peak_mb()}


FULL_COVARIANCE_BYTES = 4e9
"""Above this, per-class D×D outer-product sums (float64) are not computed (ImageNet-LT at D = 2048
would need 34 GB): only the per-class, per-dimension moments the denoiser path uses."""


def full_statistics(mixture: Mixture) -> bool:
    return len(mixture.counts) * mixture.dim**2 * 8 <= FULL_COVARIANCE_BYTES


def statistics_stage(mixture: Mixture) -> float:
    """The per-class sufficient statistics streamed in chunks: counts, sums and outer products
    where C·D² fits (`full_statistics`), else counts, sums and per-dimension sums of squares."""
    started = time.perf_counter()
    classes = len(mixture.counts)
    total = SufficientStatistics.zeros(classes, mixture.dim) if full_statistics(mixture) else None
    squares = torch.zeros(classes, mixture.dim, dtype=torch.float64)
    sums = torch.zeros(classes, mixture.dim, dtype=torch.float64)
    for features, labels in mixture.chunks(16_384):
        if total is not None:
            total.add_(features, labels)
        else:
            x = features.double()
            sums.index_add_(0, labels, x)
            squares.index_add_(0, labels, x.square())
    return time.perf_counter() - started


def denoiser_stage(mixture: Mixture, steps: int) -> float:
    """Seconds per 1,000 steps of LDMLR's stage 2 (on one 65k-row chunk of the mixture)."""
    features, labels = mixture.batch(torch.randperm(len(mixture.labels), generator=mixture.generator)[:65_536])
    config = DiffusionConfig(steps=steps)
    model = initialise(build_denoiser(mixture.dim, len(mixture.counts), config), named_generator(0, "scale/init"))
    scaled = Standardizer.fitted(features).encode(features)
    state = denoiser_state(model, len(labels), config, named_generator(0, "scale/data"), draws=named_generator(0, "scale/draws"))
    started = time.perf_counter()
    train_denoiser(state, scaled, labels, schedule_for(config), config)
    return (time.perf_counter() - started) / steps * 1000


def sampler(mixture: Mixture) -> FeatureGenerator:
    config = DiffusionConfig()
    model = initialise(build_denoiser(mixture.dim, len(mixture.counts), config), named_generator(0, "scale/init")).eval()
    scaler = Standardizer(mixture.dim)
    return FeatureGenerator(model, scaler, None, schedule_for(config), "eps")


def sampling_stage(mixture: Mixture, count: int, folder: Path, chunk: int = 4096) -> float:
    """Seconds per 100,000 pseudo-features: `count` of them sampled chunk by chunk and appended to
    a file on disk, so memory holds one chunk whatever the count."""
    generator = sampler(mixture)
    labels = torch.randint(len(mixture.counts), (count,), generator=mixture.generator)
    stream = named_generator(0, "scale/sampling")
    started = time.perf_counter()
    with (folder / "pseudo.f32").open("wb") as sink:
        for part in labels.split(chunk):
            sink.write(generator.sample(part, SamplerSettings(), stream).numpy().tobytes())
    return (time.perf_counter() - started) / count * 100_000


class AnonymousPeak:
    """The high-water mark of this process's resident anonymous memory (Linux RssAnon, sampled
    every 20 ms) inside the block: what a stage holds itself, apart from the pages of a
    memory-mapped file, which the kernel may drop again."""

    def __enter__(self) -> AnonymousPeak:
        self.peak_kib, self._stop = self.now_kib(), threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    @staticmethod
    def now_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kib = max(self.peak_kib, self.now_kib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._watcher.join()
        self.peak_kib = max(self.peak_kib, self.now_kib())

    @property
    def peak_mb(self) -> float:
        return self.peak_kib / 1024


def streamed_fill_stage(mixture: Mixture, count: int, folder: Path) -> dict[str, float]:
    """The library's streamed path (`featdiff.api`): `Generator.write_fill` samples `count`
    pseudo-features chunk by chunk into a safetensors file, then one epoch of the linear head
    runs over the memory-mapped file (`open_features`), batch by batch."""
    counts = torch.full((len(mixture.counts),), count // len(mixture.counts))
    features, labels = mixture.batch(torch.arange(len(mixture.counts)))  # one training record per class (transfer is off)
    generator = Generator("diffusion", config_from_dict({}), torch.ones(len(mixture.counts), dtype=torch.int64), features, labels)
    generator.denoiser = sampler(mixture)
    path = folder / "fill.safetensors"
    reset_peak()
    with AnonymousPeak() as writing:
        started = time.perf_counter()
        generator.write_fill(path, counts, include_real=False, chunk=4096)
        write_s = time.perf_counter() - started
    write_peak = peak_mb()
    x, y = open_features(path)
    config = ClassifierConfig(epochs=1)
    head = torch.nn.Linear(mixture.dim, len(mixture.counts))
    state = classifier_state(head, len(y), config, named_generator(0, "scale/head"))
    reset_peak()
    with AnonymousPeak() as training:
        started = time.perf_counter()
        train_classifier(state, WeightedFeatures(x, y, torch.ones(len(y))), config, desc="head over the mapped fill")
        epoch_s = time.perf_counter() - started
    path.unlink()
    return {
        "file_mb": len(y) * (mixture.dim * 4 + 8) / 2**20,
        "write_s": write_s,
        "write_anon_peak_mb": writing.peak_mb,
        "write_peak_mb": write_peak,
        "epoch_s": epoch_s,
        "epoch_anon_peak_mb": training.peak_mb,
        "epoch_peak_mb": peak_mb(),
    }


def sampling_gflops(mixture: Mixture, seconds_per_100k: float) -> float:
    model = sampler(mixture).denoiser
    x, y = torch.randn(1024, mixture.dim), torch.randint(len(mixture.counts), (1024,))
    with FlopCounterMode(display=False) as counter:
        model.forward_shared_timestep(x, 500, y)
    per_sample = counter.get_total_flops() / 1024 * SamplerSettings().steps
    return per_sample * 100_000 / seconds_per_100k / 1e9


def classifier_stage(mixture: Mixture, batches: int | None) -> float:
    """Seconds per epoch of the linear head over every record (measured over `batches` batches
    and scaled to the epoch when given)."""
    classes = len(mixture.counts)
    head = torch.nn.Linear(mixture.dim, classes)
    config = ClassifierConfig()
    optimizer = make_classifier_optimizer(head, config)
    loss_of = ClassifierLoss.of(config, mixture.counts.double())
    order = torch.randperm(len(mixture.labels), generator=mixture.generator)
    steps = math.ceil(len(order) / config.batch_size)
    taken = steps if batches is None else min(batches, steps)
    started = time.perf_counter()
    for step in range(taken):
        features, labels = mixture.batch(order[step * config.batch_size : (step + 1) * config.batch_size])
        loss = loss_of(head(features), labels, torch.ones(len(labels)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) * steps / taken


def subsample(counts: torch.Tensor, *, records: float = 1.0, classes: float = 1.0) -> torch.Tensor:
    """The counts with a share of every class's records (at least one each) and/or of the classes."""
    kept = counts[: max(1, round(len(counts) * classes))]
    return (kept.double() * records).round().clamp_min(1).long()


def slope(sizes: list[float], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def run_all(args: argparse.Namespace, folder: Path) -> dict:
    counts = long_tailed_counts(**SHAPES["imagenet-lt"])
    report: dict = {"shapes": {}, "growth": {}}
    print(f"ImageNet-LT shape: {len(counts)} classes, {int(counts.sum())} records, {int(counts.max())} to {int(counts.min())}", flush=True)
    for name, shape in SHAPES.items():
        shape_counts = long_tailed_counts(**shape)
        for dim in (512, 2048) if name == "imagenet-lt" else (2048,):
            mixture = Mixture(shape_counts, dim)
            entry = {
                "records": int(shape_counts.sum()),
                "classes": len(shape_counts),
                "dim": dim,
                "full_statistics": full_statistics(mixture),
                "statistics": measured(lambda m=mixture: statistics_stage(m)),
                "denoiser_per_1k_steps": measured(lambda m=mixture: denoiser_stage(m, args.denoiser_steps)),
                "sampling_per_100k": measured(lambda m=mixture: sampling_stage(m, args.sampling_count, folder)),
                "classifier_per_epoch": measured(lambda m=mixture: classifier_stage(m, args.classifier_batches)),
            }
            entry["sampling_gflops"] = sampling_gflops(mixture, entry["sampling_per_100k"]["seconds"])
            report["shapes"][f"{name}, D = {dim}"] = entry
            print(f"{name} D={dim}: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in entry.items() if isinstance(v, dict)), flush=True)
    dim = 512
    growth = report["growth"]
    for axis, variants in (
        ("N (records)", [("records", share) for share in (0.25, 0.5, 1.0)]),
        ("C (classes)", [("classes", share) for share in (0.25, 0.5, 1.0)]),
    ):
        sizes, rows = [], []
        for key, share in variants:
            shaped = subsample(counts, **{key: share})
            mixture = Mixture(shaped, dim)
            sizes.append(float(shaped.sum()) if key == "records" else float(len(shaped)))
            rows.append(
                {
                    "statistics": measured(lambda m=mixture: statistics_stage(m)),
                    "classifier_per_epoch": measured(lambda m=mixture: classifier_stage(m, args.classifier_batches)),
                }
            )
        growth[axis] = {"sizes": sizes, "runs": rows} | {
            f"{stage}_exponent": slope(sizes, [r[stage]["seconds"] for r in rows]) for stage in ("statistics", "classifier_per_epoch")
        }
        print(f"growth in {axis}: " + ", ".join(f"{k} {v:.2f}" for k, v in growth[axis].items() if k.endswith("exponent")), flush=True)
    dims, rows = [512, 1024, 2048], []
    for d in dims:
        mixture = Mixture(subsample(counts, records=0.25), d)
        rows.append(
            {
                "statistics": measured(lambda m=mixture: statistics_stage(m)),
                "denoiser_per_1k_steps": measured(lambda m=mixture: denoiser_stage(m, args.denoiser_steps)),
                "sampling_per_100k": measured(lambda m=mixture: sampling_stage(m, args.sampling_count, folder)),
                "classifier_per_epoch": measured(lambda m=mixture: classifier_stage(m, args.classifier_batches)),
            }
        )
    growth["D (dimension)"] = {"sizes": dims, "runs": rows} | {
        f"{stage}_exponent": slope(dims, [r[stage]["seconds"] for r in rows]) for stage in rows[0] if stage != "statistics"
    }  # statistics switch to per-dimension moments above 4 GB of outer products: no one exponent
    print("growth in D: " + ", ".join(f"{k} {v:.2f}" for k, v in growth["D (dimension)"].items() if k.endswith("exponent")), flush=True)
    mixture = Mixture(counts, dim)
    pseudo = [25_000, 50_000, 100_000]
    rows = [streamed_fill_stage(mixture, count, folder) for count in pseudo]
    growth["pseudo count (streamed fill and one head epoch over the mapped file)"] = {
        "sizes": pseudo,
        "runs": rows,
        "write_exponent": slope(pseudo, [r["write_s"] for r in rows]),
        "epoch_exponent": slope(pseudo, [r["epoch_s"] for r in rows]),
        "anon_peak_mb_range": [
            min(min(r["write_anon_peak_mb"], r["epoch_anon_peak_mb"]) for r in rows),
            max(max(r["write_anon_peak_mb"], r["epoch_anon_peak_mb"]) for r in rows),
        ],
        "file_mb": [r["file_mb"] for r in rows],
    }
    streamed = growth["pseudo count (streamed fill and one head epoch over the mapped file)"]
    print(
        f"growth in the pseudo count: write {streamed['write_exponent']:.2f}, head epoch {streamed['epoch_exponent']:.2f}; "
        f"anonymous peak {streamed['anon_peak_mb_range'][0]:.0f}–{streamed['anon_peak_mb_range'][1]:.0f} MB "
        f"for files of {streamed['file_mb'][0]:.0f}–{streamed['file_mb'][-1]:.0f} MB",
        flush=True,
    )
    report["matmul_peak_gflops"] = matmul_peak_gflops()
    inet = report["shapes"]["imagenet-lt, D = 512"]
    fill = int(len(counts) * counts.max() - counts.sum())
    report["imagenet_lt_stages_2_3_estimate_s"] = {
        "balanced_fill": fill,
        "denoiser_3000_steps": 3 * inet["denoiser_per_1k_steps"]["seconds"],
        "sampling": fill / 100_000 * inet["sampling_per_100k"]["seconds"],
        "classifier_400_epochs": 400 * inet["classifier_per_epoch"]["seconds"] * (int(counts.sum()) + fill) / int(counts.sum()),
    }
    return report


def markdown(report: dict) -> str:
    lines = [
        "# featdiff at ImageNet-LT and iNaturalist-2018 shape (synthetic class-Gaussian features)",
        "",
        f"Device: {report['device']}; fp32 matmul peak {report['matmul_peak_gflops']:.0f} GFLOP/s. Command: `{report['command']}`.",
        "Seconds are per unit of work (denoiser per 1,000 steps of batch 512; sampling per 100,000 features, 50 DDIM steps;",
        "classifier per epoch of batch 1,024 over every record); peak memory is the process's resident high-water mark during the stage.",
        "",
        "| shape | N | C | D | statistics (s / MB) | denoiser per 1k steps (s / MB) | sampling per 100k (s / MB) "
        "| sampling GFLOP/s (share of peak) | classifier per epoch (s / MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in report["shapes"].items():
        cells = [f"{e[k]['seconds']:.1f} / {e[k]['peak_mb']:.0f}" for k in ("statistics", "denoiser_per_1k_steps", "sampling_per_100k")]
        cells[0] += "" if e["full_statistics"] else " (per-dimension moments only)"
        share = e["sampling_gflops"] / report["matmul_peak_gflops"]
        head = e["classifier_per_epoch"]
        lines.append(
            f"| {name.split(',')[0]} | {e['records']} | {e['classes']} | {e['dim']} | "
            + " | ".join(cells)
            + f" | {e['sampling_gflops']:.0f} ({share:.0%}) | {head['seconds']:.1f} / {head['peak_mb']:.0f} |"
        )
    lines += ["", "Growth exponents (log-log slope of seconds against size, three sizes, ImageNet-LT shape):", ""]
    lines += ["| axis | sizes | exponents |", "|---|---|---|"]
    for axis, g in report["growth"].items():
        exponents = ", ".join(f"{k.removesuffix('_exponent')} {v:.2f}" for k, v in g.items() if k.endswith("_exponent"))
        extra = ""
        if "anon_peak_mb_range" in g:
            extra = (
                f"; anonymous memory peak {g['anon_peak_mb_range'][0]:.0f}–{g['anon_peak_mb_range'][1]:.0f} MB"
                f" for fills of {g['file_mb'][0]:.0f}–{g['file_mb'][-1]:.0f} MB on disk"
            )
        lines.append(f"| {axis} | {', '.join(str(int(s)) for s in g['sizes'])} | {exponents}{extra} |")
    lines += [
        "",
        "Per-class D×D outer products (the class Gaussian's full covariances, and the federated setup's statistics) are",
        "computed only where C·D²·8 bytes ≤ 4 GB: ImageNet-LT at D = 2048 would need 34 GB and iNaturalist 273 GB, so at",
        "that scale the class Gaussian needs a pooled or diagonal covariance (not built yet); the denoiser path needs only",
        "the per-dimension moments.",
    ]
    estimate = report["imagenet_lt_stages_2_3_estimate_s"]
    total = sum(v for k, v in estimate.items() if k != "balanced_fill")
    lines += [
        "",
        f"ImageNet-LT, D = 512, stages 2+3 with a balanced fill ({estimate['balanced_fill']} pseudo-features), from the rates above:"
        f" denoiser (3,000 steps) {estimate['denoiser_3000_steps'] / 60:.1f} min, sampling {estimate['sampling'] / 60:.1f} min,"
        f" classifier (400 epochs over real + pseudo) {estimate['classifier_400_epochs'] / 3600:.1f} h:"
        f" {total / 3600:.1f} h on this machine.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(report["growth"]), figsize=(4.5 * len(report["growth"]), 3.6))
    for axis, (name, g) in zip(axes, report["growth"].items(), strict=True):
        for stage in (k.removesuffix("_exponent") for k in g if k.endswith("_exponent")):
            values = [r[f"{stage}_s"] if "anon_peak_mb_range" in g else r[stage]["seconds"] for r in g["runs"]]
            axis.loglog(g["sizes"], values, marker="o", label=f"{stage} ({g[stage + '_exponent']:.2f})")
        axis.set_xlabel(name)
        axis.set_ylabel("seconds")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--denoiser-steps", type=int, default=200)
    parser.add_argument("--sampling-count", type=int, default=20_000)
    parser.add_argument("--classifier-batches", type=int, default=30, help="batches measured per epoch (scaled to the epoch)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="featdiff-scale-") as folder:
        report = run_all(args, Path(folder))
    report |= {
        "device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} torch threads",
        "command": "python " + " ".join(sys.argv),
    }
    write_report(args.out, report, markdown(report))
    plot(report, args.out.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
