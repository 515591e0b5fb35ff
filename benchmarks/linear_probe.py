"""Benchmark: a linear probe trained on test-like features, a reference for the frozen encoders' goals (not a method).

For each CIFAR-LT split, a linear probe (multinomial logistic regression on standardised features, its
L2 strength chosen by 3-fold cross-validation inside its training half: scikit-learn's
LogisticRegressionCV) is trained on one half of every class of the *report part* of the test set and
scored on the other half, then the halves swap; the two scores' mean is one seed's (fold split).

What it measures: how well a linear head on the frozen shipped encoder does when it is trained on
balanced images from the distribution it is scored on, which no method has: how much of the room
above post-hoc logit adjustment a better training set for the head could close (issue 17's goals).
What it is not: a ceiling. It trains on 40 images a class on CIFAR-100 (400 on CIFAR-10), fewer than
the shipped head saw of most classes, so where the tail is not rare (IF = 10) it can fall below the
shipped head. It sees test labels, so it is never a method: its one knob is chosen inside each
training half, nothing is chosen on its scores, and the validation part is not touched. The test
features are the eval-mode features every method is scored on (`features.style` changes the
training features only).

    python benchmarks/linear_probe.py --threads 1    # all four splits, 3 fold splits (~6 min alone on 2 cores)
    python benchmarks/linear_probe.py --threads 1 --test-time-flip --out benchmarks/results/linear_probe_flip   # on flipped test features

Writes benchmarks/results/linear_probe.{json,md}, or the path given by --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from featdiff.config import config_from_dict
from featdiff.errors import exit_status
from featdiff.evaluation.protocol import split_test_set
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.pipeline import shipped_encoder_features
from featdiff.report import fmt_mean_std, write_report

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar-lt"
RESULTS = ROOT / "benchmarks" / "results"
SPLITS = ["cifar10:100", "cifar10:10", "cifar100:100", "cifar100:10"]


def split_config(split: str, threads: int, *, test_time_flip: bool = False):
    dataset, imbalance = split.split(":")
    return config_from_dict(
        {
            "data": {"dataset": dataset, "imbalance_factor": float(imbalance), "root": str(DATA)},
            "encoder": {"checkpoint": str(DATA / f"ldmlr_resnet32_{dataset}_lt_if{imbalance}.safetensors")},
            "evaluation": {"test_time_flip": test_time_flip},
            "compute": {"threads": threads},
        }
    )


REGULARISATION_GRID = np.logspace(-3, 2, 11)
"""Inverse L2 strengths the probe's inner cross-validation chooses among."""


def two_fold_accuracy(features: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fold = split_test_set(labels, 0.5, seed)  # the same per-class seeded split as the validation part's
    first = np.zeros(len(labels), dtype=bool)
    first[fold.validation.numpy()] = True
    x, y = features.double().numpy(), labels.numpy()
    scores = []
    for train in (first, ~first):
        regression = LogisticRegressionCV(
            Cs=REGULARISATION_GRID, l1_ratios=(0.0,), cv=3, scoring="accuracy", max_iter=3000, random_state=seed
        )
        probe = make_pipeline(StandardScaler(), regression)
        with warnings.catch_warnings():  # scikit-learn's notices of its coming API changes, not about this fit
            warnings.simplefilter("ignore", FutureWarning)
            probe.fit(x[train], y[train])
        scores.append(100.0 * float((probe.predict(x[~train]) == y[~train]).mean()))
    return statistics.fmean(scores)


def measure(split: str, seeds: list[int], threads: int, *, test_time_flip: bool) -> dict:
    config = split_config(split, threads, test_time_flip=test_time_flip)
    encoded = shipped_encoder_features(config)
    labels = encoded.test_labels.long()
    report = split_test_set(labels, config.evaluation.validation_fraction, config.evaluation.validation_seed).report
    features, labels = encoded.test_features[report].float(), labels[report]
    return {"seeds": seeds, "accuracy": [two_fold_accuracy(features, labels, seed) for seed in seeds], "rows": len(labels)}


def markdown(report: dict) -> str:
    lines = [
        "# A linear probe trained on test-like features (a reference, not a method)",
        "",
        "Logistic regression (L2 chosen by 3-fold CV inside its training half) on the frozen shipped encoder's features,",
        "trained on half of every class of the report part of the test set and scored on the other half (2-fold), mean ± std",
        "over fold splits. It sees test labels, balanced and from the distribution it is scored on: how far a linear head",
        "goes with a test-like training set, never a result. Not a ceiling: it trains on half of the report part's images",
        "of each class (40 on CIFAR-100, 400 on CIFAR-10), fewer than the shipped head saw of most classes at IF = 10.",
        "",
        *(
            ["Test features: the mean of each test image's and its mirror image's (`evaluation.test_time_flip`).", ""]
            if report.get("test_time_flip")
            else []
        ),
        f"`{report['command']}` ({report['device']}, {report['wall_s'] / 60:.1f} min)",
        "",
        "| split | 2-fold accuracy on the report part | report rows |",
        "|---|---|---|",
    ]
    for split, entry in report["splits"].items():
        lines.append(f"| {split.replace(':', ' IF=')} | {fmt_mean_std(entry['accuracy'])} | {entry['rows']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=SPLITS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (recorded)")
    parser.add_argument("--out", type=Path, default=RESULTS / "linear_probe", help="results path, without suffix")
    parser.add_argument("--test-time-flip", action="store_true", help="probe the mean of each test image's and its mirror's features")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_torch_caches_in_featdiff_cache()
    started = time.perf_counter()
    splits = {}
    for split in args.splits:
        splits[split] = measure(split, args.seeds, args.threads, test_time_flip=args.test_time_flip)
        print(f"{split}: {statistics.fmean(splits[split]['accuracy']):.2f}", flush=True)
    report = {
        "splits": splits,
        "test_time_flip": args.test_time_flip,
        "command": "python " + " ".join(sys.argv),
        "device": f"cpu, {args.threads} torch threads",
        "wall_s": time.perf_counter() - started,
    }
    write_report(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    sys.exit(exit_status(main, "linear_probe.py"))
