"""Benchmark: LDMLR on LDMLR's four shipped ResNet-32 encoders (CIFAR-10/100-LT, IF 100/10).

Methods: `ce` (the encoder as shipped), `fc_retrain` (the control), `ldmlr` with LDMLR's count rule
and `ldmlr` with balanced filling; 3 seeds each; final epoch only, nothing selected on the test set.
Also measures generation throughput (GFLOP/s) against this machine's fp32 matmul peak.

    python benchmarks/ldmlr_frozen.py [--seeds 0 1 2] [--splits cifar10:100 ...]

Writes benchmarks/results/ldmlr_frozen.json and benchmarks/results/ldmlr_frozen.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import matmul_peak_gflops
from torch.utils.flop_counter import FlopCounterMode

from featdiff.config import config_from_dict
from featdiff.generation.pseudo import build_denoiser
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.pipeline import execute
from featdiff.report import GROUPS, fmt_mean_std, write_report
from featdiff.runs import Run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar-lt"
RESULTS = ROOT / "benchmarks" / "results"
SPLITS = ["cifar10:100", "cifar10:10", "cifar100:100", "cifar100:10"]
# LDMLR's README (best test epoch of 400): CE+LDMLR and Label shift+LDMLR.
PUBLISHED = {
    "cifar10:100": (76.26, 82.77),
    "cifar10:10": (89.13, 89.70),
    "cifar100:100": (43.34, 49.76),
    "cifar100:10": (60.10, 62.67),
}
VARIANTS = {"ldmlr (count rule)": "ldmlr", "ldmlr (balanced)": "balanced"}


def denoiser_flops_per_sample(config) -> float:
    """FLOPs of one sampling step's denoiser evaluation per sample (the shared-timestep path that
    sampling runs), counted by PyTorch's flop counter."""
    model = build_denoiser(64, 10, config.diffusion).eval()
    batch = 4096
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        model.forward_shared_timestep(x, 500, y)
    return counter.get_total_flops() / batch


def run_one(split: str, seed: int, count_rule: str, feature_style: str, workdir: Path) -> dict:
    dataset, imbalance = split.split(":")
    config = config_from_dict(
        {
            "name": f"{dataset}-if{imbalance}-{count_rule}-s{seed}",
            "method": "ldmlr",
            "seed": seed,
            "data": {"dataset": dataset, "imbalance_factor": float(imbalance), "root": str(DATA)},
            "encoder": {"checkpoint": str(DATA / f"ldmlr_resnet32_{dataset}_lt_if{imbalance}.safetensors")},
            "features": {"style": feature_style},
            "generation": {"count_rule": count_rule},
        }
    )
    return execute(Run.create(workdir / config.name, config))


def aggregate(summaries: list[dict]) -> dict:
    out = {}
    for kind in ("acc", "acc_adjusted", "acc_index", "acc_index_adjusted"):
        if kind not in summaries[0]:
            continue
        out[kind] = {}
        for group in summaries[0][kind]:
            values = [s[kind][group] for s in summaries]
            present = [v for v in values if v is not None]
            mean = sum(present) / len(present) if present else None
            std = (sum((v - mean) ** 2 for v in present) / max(len(present) - 1, 1)) ** 0.5 if present else None
            out[kind][group] = {"mean": mean, "std": std, "values": values}
    return out


def markdown(report: dict) -> str:
    lines = [
        "# LDMLR on the shipped encoders (frozen), final epoch",
        "",
        f"Device: {report['device']}. Seeds: {report['seeds']}. Training features: {report['feature_style']} style. "
        "Top-1 % on the full test set, mean ± std over seeds.",
        "`adj.` = post-hoc logit adjustment by the prior of the set the classifier was trained on "
        "(real + weighted pseudo counts). Published = LDMLR README, best test epoch of 400 (CE+LDMLR / Label shift+LDMLR).",
        "",
        "| split | method | " + " | ".join(GROUPS) + " | " + " | ".join(f"{g} adj." for g in GROUPS) + " | published (plain / adj.) |",
        "|---|---|" + "---|" * (2 * len(GROUPS) + 1),
    ]
    for split, entry in report["splits"].items():
        for method, stats in entry["methods"].items():
            plain = [fmt_mean_std(stats["acc"][g]["values"]) for g in GROUPS]
            adjusted = [fmt_mean_std(stats["acc_adjusted"][g]["values"]) for g in GROUPS]
            published = "{:.2f} / {:.2f}".format(*PUBLISHED[split]) if method.startswith("ldmlr") else ""
            lines.append(f"| {split.replace(':', ' IF=')} | {method} | " + " | ".join(plain + adjusted) + f" | {published} |")
    lines += [
        "",
        "CIFAR-10 index groups (classes 0–3 / 4–6 / 7–9), plain and adjusted:",
        "",
        "| split | method | head | mid | tail | head adj. | mid adj. | tail adj. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, entry in report["splits"].items():
        if not split.startswith("cifar10:"):
            continue
        for method, stats in entry["methods"].items():
            cells = [fmt_mean_std(stats[k][g]["values"]) for k in ("acc_index", "acc_index_adjusted") for g in ("head", "mid", "tail")]
            lines.append(f"| {split.replace(':', ' IF=')} | {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Wall time per stage (s, mean over seeds; features extracted once per split and cached):",
        "",
        "| split | variant | features | denoiser | generation | classifier | stages 2+3 | pseudo-features |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, entry in report["splits"].items():
        for variant, timing in entry["timings"].items():
            lines.append(
                f"| {split.replace(':', ' IF=')} | {variant} | {timing['features_s']:.1f} | {timing['denoiser_s']:.1f} | "
                f"{timing['generation_s']:.1f} | {timing['classifier_s']:.1f} | {timing['stages_2_3_s']:.1f} | {timing['pseudo_count']} |"
            )
    throughput = report["throughput"]
    lines += [
        "",
        f"Generation throughput (CIFAR-10 IF=100, balanced fill of {throughput['samples']} features, "
        f"{throughput['steps']} {throughput['sampler']} steps): {throughput['generation_s']:.1f} s, "
        f"{throughput['achieved_gflops']:.0f} GFLOP/s achieved vs {throughput['matmul_peak_gflops']:.0f} GFLOP/s "
        f"measured fp32 matmul peak ({throughput['fraction_of_peak']:.0%}).",
        "",
        f"Command: `{report['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=SPLITS, choices=SPLITS)
    parser.add_argument(
        "--feature-style",
        default="ldmlr",
        choices=["ldmlr", "eval"],
        help="training-feature extraction: LDMLR's (train-mode BN, one augmented pass) or clean eval-mode",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ldmlr_frozen")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (recorded in the device column)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_torch_caches_in_featdiff_cache()
    workdir = Path(tempfile.mkdtemp(prefix="featdiff-bench-"))
    report = {
        "device": "",
        "seeds": args.seeds,
        "feature_style": args.feature_style,
        "splits": {},
        "command": "python " + " ".join(sys.argv),
    }
    try:
        for split in args.splits:
            runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
            for seed in args.seeds:
                for name, rule in VARIANTS.items():
                    started = time.perf_counter()
                    runs[name].append(run_one(split, seed, rule, args.feature_style, workdir))
                    print(
                        f"{split} seed {seed} {name}: {runs[name][-1]['acc']['overall']:.2f} "
                        f"(adj. {runs[name][-1]['acc_adjusted']['overall']:.2f}) in {time.perf_counter() - started:.0f} s",
                        flush=True,
                    )
            first = runs["ldmlr (count rule)"]
            methods = {
                "ce": aggregate([r["controls"]["ce"] for r in first]),
                "fc_retrain": aggregate([r["controls"]["fc_retrain"] for r in first]),
                **{name: aggregate(results) for name, results in runs.items()},
            }
            timings = {}
            for name, results in runs.items():
                mean = {
                    k: sum(r["stage_s"].get(k, 0.0) for r in results) / len(results)
                    for k in ("features_s", "denoiser_s", "generation_s", "classifier_s")
                }
                mean["stages_2_3_s"] = mean["denoiser_s"] + mean["generation_s"] + mean["classifier_s"]
                mean["pseudo_count"] = sum(results[0]["pseudo_counts"])
                timings[name] = mean
            report["splits"][split] = {"methods": methods, "timings": timings, "runs": runs}
            report["device"] = first[0]["device"]
        balanced = report["splits"].get("cifar10:100", next(iter(report["splits"].values())))
        config = config_from_dict({})
        flops = denoiser_flops_per_sample(config) * balanced["timings"]["ldmlr (balanced)"]["pseudo_count"]
        generation_s = min(r["stage_s"]["generation_s"] for r in balanced["runs"]["ldmlr (balanced)"])
        achieved = flops * config.diffusion.resolved_sample_steps() / generation_s / 1e9
        peak = matmul_peak_gflops()
        report["throughput"] = {
            "samples": balanced["timings"]["ldmlr (balanced)"]["pseudo_count"],
            "steps": config.diffusion.resolved_sample_steps(),
            "sampler": config.diffusion.resolved_sampler(),
            "generation_s": generation_s,
            "achieved_gflops": achieved,
            "matmul_peak_gflops": peak,
            "fraction_of_peak": achieved / peak,
            "machine": platform.processor() or platform.machine(),
        }
        write_report(args.out, report, markdown(report))
        print(markdown(report))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
