"""Benchmark: does FedDDPM's server correction move the global denoiser towards the federation's statistics? (issue 18)

FedDDPM corrects the aggregated denoiser with server steps on an auxiliary bank drawn from the
clients' warm-up models. featdiff scores the correction (`federated.correction: scored`) by the mean
per-class Fréchet distance of fresh samples to the federation's class statistics, and undoes it
when the corrected model scores worse on the same draws. This check measures what the correction
does, outside any run: FedAvg's global denoiser after R rounds (CIFAR-10-LT-100's shipped encoder,
α = 0.5, 20 clients, 8 per round, the federated benchmark's settings) takes k steps at the server's
learning rate and batch, from a fresh optimizer as the correction does, on
- the warm-up bank (FedDDPM's correction),
- the pooled real training features (a reference the server does not have: what steps on the
  data itself would do),
and, as a control for the size of the step, a random ±lr perturbation of every parameter. Each
model is scored on the same sampler draws (paired), as many samples per class as the bank holds.

    python benchmarks/correction_check.py --threads 1     # 3 seeds, ~10 min on 1 torch thread

Writes benchmarks/results/correction_check.{json,md}. Nothing here reads the test set.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from featdiff.config import RunConfig, load_config
from featdiff.errors import exit_status
from featdiff.federated.bank import class_frechet, mean_ignoring_nan
from featdiff.federated.client import local_update
from featdiff.federated.server import Setup
from featdiff.federated.task import encoded_features, new_denoiser
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, schedule_for
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.pipeline import export_features
from featdiff.report import fmt_mean_std, write_report
from featdiff.seeding import named_generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from federated import RESULTS, config_for, run_or_reuse  # noqa: E402  (the federated benchmark's federation and runs)

ROUNDS = (2, 4, 8, 30)
STEPS = (1, 4, 10)
SHAPE = {"alpha": 0.5, "clients": 20, "clients_per_round": 8}


class Scorer:
    """A federation run's global denoiser, its setup and bank, scored against the federation's statistics."""

    def __init__(self, folder: Path) -> None:
        self.config: RunConfig = load_config(folder / "config.yaml")
        self.setup = Setup.of(load_file(folder / "setup.safetensors"))
        warm = load_file(folder / "warmup.safetensors")
        kept = ~warm["holdout"].bool()
        self.bank = warm["features"][kept], warm["labels"][kept].long()
        classes = self.setup.client_counts.shape[1]
        self.model = new_denoiser(self.setup.scaler.mean.numel(), classes, self.config)
        self.model.load_state_dict(load_file(folder / "denoiser.safetensors"))
        self.aggregated = {name: value.clone() for name, value in self.model.state_dict().items()}
        self.schedule = schedule_for(self.config.diffusion)
        self.reference = (self.setup.means, self.setup.covariances, self.setup.client_counts.sum(0) >= 2)
        self.per_class = torch.bincount(self.bank[1], minlength=classes)
        self.generator = FeatureGenerator(
            self.model, self.setup.scaler, self.setup.clip, self.schedule, self.config.diffusion.resolved_prediction()
        )
        """Holds `self.model` itself: every state loaded into the model is what it samples."""
        self.sampler = SamplerSettings.of(self.config.diffusion)

    def frechet(self, features: Tensor, labels: Tensor) -> float:
        return mean_ignoring_nan(class_frechet(features, labels, *self.reference))

    def model_frechet(self) -> float:
        """The model's samples (the same draws for every model: a paired comparison), scored."""
        self.model.eval()
        features, labels = self.generator.generate(
            self.per_class, self.sampler, named_generator(self.config.seed, "correction-check/draws")
        )
        return self.frechet(features, labels)

    def after_steps(self, features: Tensor, labels: Tensor, steps: int) -> float:
        """The aggregated model after `steps` server steps on (features, labels), scored."""
        self.model.load_state_dict(self.aggregated)
        fed = self.config.federated
        diffusion = self.config.diffusion.model_copy(update={"lr": fed.server_lr, "batch_size": fed.server_batch})
        weights, _ = local_update(
            self.model,
            self.setup.scaler.encode(features),
            labels,
            self.schedule,
            diffusion,
            steps,
            data=named_generator(self.config.seed, "correction-check/data"),
            draws=named_generator(self.config.seed, "correction-check/diffusion"),
        )
        self.model.load_state_dict(weights)
        return self.model_frechet()

    def perturbed(self) -> float:
        """The aggregated model with every parameter moved by ±server_lr (a step of the correction's size, no direction)."""
        self.model.load_state_dict(self.aggregated)
        signs = named_generator(self.config.seed, "correction-check/signs")
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.add_(self.config.federated.server_lr * torch.randn(parameter.shape, generator=signs).sign())
        return self.model_frechet()


def measure(seed: int, features_file: Path, workdir: Path) -> list[dict]:
    real = encoded_features(features_file)
    real_features, real_labels = real["train_features"], real["train_labels"].long()
    prefix = f"cifar10-s{seed}-fedavg"
    rows = []
    for rounds in sorted(ROUNDS, reverse=True):  # the longest run first: it asks the clients for the warm-up the others reuse
        warmup_from = "" if rounds == max(ROUNDS) else str(workdir / f"{prefix}-r{max(ROUNDS)}")
        config = config_for(
            "cifar10",
            seed,
            f"{prefix}-r{rounds}",
            features_file,
            SHAPE | {"rounds": rounds, "algorithm": "fedavg", "warmup_from": warmup_from},
        )
        run_or_reuse(config, workdir)
        scorer = Scorer(workdir / config.name)
        row = {
            "seed": seed,
            "rounds": rounds,
            "bank": scorer.frechet(*scorer.bank),
            "model": scorer.model_frechet(),
            "perturbed": scorer.perturbed(),
            "bank_steps": {str(k): scorer.after_steps(*scorer.bank, k) for k in STEPS},
            "real_steps": {str(k): scorer.after_steps(real_features, real_labels, k) for k in STEPS},
        }
        rows.append(row)
        print(
            f"seed {seed}, {rounds} rounds: model {row['model']:.2f}, bank {row['bank']:.2f}, 10 bank steps {row['bank_steps']['10']:.2f}",
            flush=True,
        )
    return rows


def markdown(report: dict) -> str:
    lines = [
        "# What FedDDPM's server correction does to FedAvg's global denoiser",
        "",
        "Mean per-class Fréchet distance of the global denoiser's samples to the federation's class statistics (lower is",
        "closer), CIFAR-10-LT-100, α = 0.5, 20 clients (8 per round), after R rounds of FedAvg; then k server steps at the",
        "server's lr from a fresh optimizer on the warm-up bank (the correction) or on the pooled real training features (a",
        "reference the server lacks), or a random ±lr move of every parameter. Same sampler draws for every model of a row.",
        f"Mean ± std over seeds {report['seeds']}.",
        "",
        f"`{report['command']}` ({report['device']}, {report['wall_s'] / 60:.1f} min)",
        "",
        "| rounds | bank | model | ±lr perturbation | "
        + " | ".join(f"{k} bank step{'s' * (k > 1)}" for k in STEPS)
        + " | "
        + " | ".join(f"{k} real step{'s' * (k > 1)}" for k in STEPS)
        + " |",
        "|---|---|---|---|" + "---|" * (2 * len(STEPS)),
    ]
    for rounds in ROUNDS:
        rows = [r for r in report["rows"] if r["rounds"] == rounds]
        cells = [fmt_mean_std([r[key] for r in rows]) for key in ("bank", "model", "perturbed")]
        cells += [fmt_mean_std([r["bank_steps"][str(k)] for r in rows]) for k in STEPS]
        cells += [fmt_mean_std([r["real_steps"][str(k)] for r in rows]) for k in STEPS]
        lines.append(f"| {rounds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (recorded)")
    parser.add_argument("--workdir", type=Path, help="keeps the federation runs and reuses finished ones")
    parser.add_argument("--out", type=Path, default=RESULTS / "correction_check", help="results path, without suffix")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_torch_caches_in_featdiff_cache()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="featdiff-correction-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    features_file = workdir / "cifar10-features.safetensors"
    if not features_file.exists():
        export_features(config_for("cifar10", 0, "cifar10-encode", features_file, {}), features_file)
    rows = [row for seed in args.seeds for row in measure(seed, features_file, workdir)]
    report = {
        "seeds": args.seeds,
        "rows": rows,
        "command": shlex.join(["python", "benchmarks/correction_check.py", *sys.argv[1:]]),
        "device": f"cpu, {args.threads} torch threads",
        "wall_s": time.perf_counter() - started,
    }
    write_report(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    sys.exit(exit_status(main, "correction_check.py"))
