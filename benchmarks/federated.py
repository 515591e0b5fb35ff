"""Benchmark: federated LDMLR on LDMLR's CIFAR-10/100-LT (IF = 100) features, 20 Dirichlet(0.5)
clients, 8 per round, the Flower apps on featdiff's in-process grid (same apps and messages as the
simulation engine and a SuperLink; a function call as transport, so 2 cores train instead of
starting Ray workers).

Per dataset and seed, on one federation (one partition, one warm-up shared by the denoiser
algorithms through `federated.warmup_from`):
- baselines: FedAvg of the head (cross-entropy; read plain and logit-adjusted by the global
  prior), FedAvg of the head with the logit-adjusted loss, CReFF, FedAvg of the denoiser without
  correction (`fedavg`), and centralised LDMLR on the pooled features (the upper bound);
- FedDDPM, FedDDPM+ and the progressive bank;
- the warm-up question: FedDDPM with the warm-up uploaded as models instead of pseudo-features;
- private (ε = 10 per client, δ = 1e-5): fedavg, FedDDPM, FedDDPM+, progressive.

    python benchmarks/federated.py [--datasets cifar10 cifar100] [--seeds 0 1 2]

Writes benchmarks/results/federated.{json,md} and federated_{setting}.png (accuracy and Fréchet
distance of the probe against rounds and against bytes, seed 0). The defaults fit in 40 minutes
on 2 cores. The private sweep (every denoiser algorithm at ε = 10; 46 min of runs in all, 12 min
beyond the defaults when their runs are reused from the same --workdir) is

    python benchmarks/federated.py --workdir W --private-seeds cifar10=0:1:2,cifar100=0 \
        --private-algorithms fedddpm fedavg fedddpm_plus progressive --out benchmarks/results/federated_private

`--workdir DIR` keeps the run folders and reuses finished runs whose saved config matches. The
committed results predate the rename: they say feddpm for fedddpm (the same algorithm).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from featdiff.config import RunConfig, config_from_dict, config_to_dict, dump_config, load_config
from featdiff.diffusion.scaling import Standardizer
from featdiff.evaluation.diagnostics import compare
from featdiff.evaluation.metrics import summarize
from featdiff.federated.client_app import make_client_app
from featdiff.federated.head import train_head
from featdiff.federated.local_grid import InProcessGrid
from featdiff.federated.server_app import serve
from featdiff.federated.task import encoded_features
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, balanced_counts, build_denoiser, clip_range, schedule_for
from featdiff.io import atomic_write_bytes, atomic_write_text
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.pipeline import export_features
from featdiff.report import GROUPS, fmt, fmt_mean_std, write_report
from featdiff.runs import RESULTS_FILE
from featdiff.seeding import initialise, named_generator, reset_parameters
from featdiff.training.denoiser import denoiser_state, train_denoiser

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar-lt"
RESULTS = ROOT / "benchmarks" / "results"
BASE_CONFIG = ROOT / "configs" / "federated_cifar10_lt.yaml"
DENOISERS = ("fedavg", "fedddpm", "fedddpm_plus", "progressive")
PER_DATASET = {
    "cifar10": {"aux_per_class": 100, "pseudo_per_class": 300, "probe_per_class": 50},
    "cifar100": {"aux_per_class": 30, "pseudo_per_class": 60, "probe_per_class": 10},
}


def config_for(dataset: str, seed: int, name: str, features: Path, federated: dict, privacy: dict | None = None) -> RunConfig:
    base = config_to_dict(load_config(BASE_CONFIG))
    base["name"] = name
    base["seed"] = seed
    base["data"] |= {"dataset": dataset, "root": str(DATA)}
    base["encoder"]["checkpoint"] = str(DATA / f"ldmlr_resnet32_{dataset}_lt_if100.safetensors")
    base["federated"] |= {"features": str(features), **PER_DATASET[dataset], **federated}
    if privacy:
        base["privacy"] |= privacy
    return config_from_dict(base)


def run_or_reuse(config: RunConfig, workdir: Path) -> dict:
    """A finished run with the same config is reused (an interrupted benchmark continues)."""
    folder = workdir / config.name
    if (folder / RESULTS_FILE).exists():
        if load_config(folder / "config.yaml") != config:
            raise SystemExit(f"error: {folder} holds a run with another config; choose another --workdir")
        return json.loads((folder / RESULTS_FILE).read_text())
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished run of this benchmark: start it again
    config_path = workdir / f"{config.name}.yaml"
    config_path.write_text(dump_config(config))
    settings = {"config": str(config_path), "run-dir": str(folder)}
    started = time.perf_counter()
    results = serve(InProcessGrid(make_client_app(settings), config.federated.clients, settings), settings)
    results["wall_s"] = time.perf_counter() - started
    return results


def centralised_ldmlr(config: RunConfig, steps: int) -> dict:
    """LDMLR on the pooled training features (what a single holder of all records would do): the
    same denoiser and head recipes, `steps` denoiser steps, real features plus pseudo-features that
    fill every class up to the largest (LDMLR's balanced count rule)."""
    started = time.perf_counter()
    tensors = encoded_features(config.federated.features)
    features, labels = tensors["train_features"], tensors["train_labels"]
    classes = int(labels.max()) + 1
    scaler = Standardizer.fitted(features)
    diffusion = config.diffusion.model_copy(update={"steps": steps})
    model = initialise(build_denoiser(features.shape[1], classes, diffusion), named_generator(config.seed, "central-init"))
    schedule = schedule_for(diffusion)
    state = denoiser_state(model, len(labels), diffusion, named_generator(config.seed, "central-denoiser"))
    train_denoiser(state, scaler.encode(features), labels, schedule, diffusion)
    scaled = scaler.encode(features)
    generator = FeatureGenerator(state.ema.module.eval(), scaler, clip_range(scaled, diffusion), schedule, diffusion.resolved_prediction())
    counts = torch.bincount(labels, minlength=classes)
    fill = balanced_counts(counts)
    pseudo, pseudo_labels = generator.generate(fill, SamplerSettings.of(diffusion), named_generator(config.seed, "central-pseudo"))
    head = torch.nn.Linear(features.shape[1], classes)
    reset_parameters(head, named_generator(config.seed, "central-head"))
    combined_labels = torch.cat([labels, pseudo_labels])
    train_head(
        head,
        torch.cat([features, pseudo]),
        combined_labels,
        config.classifier,
        named_generator(config.seed, "central-train"),
        logit_adjusted=False,
    )
    trained = torch.bincount(combined_labels, minlength=classes).double()
    with torch.inference_mode():
        logits = head(tensors["test_features"])
    summary = summarize(logits, tensors["test_labels"], counts, prior=trained / trained.sum())
    return {
        "summary": summary,
        "pseudo_frechet_test": compare(tensors["test_features"], tensors["test_labels"], pseudo, pseudo_labels, classes)["mean_frechet"],
        "wall_s": time.perf_counter() - started,
    }


def central_or_reuse(config: RunConfig, steps: int, workdir: Path) -> dict:
    """Centralised LDMLR, or its saved result for the same config and steps."""
    saved = workdir / f"{config.name}-{steps}-balanced.json"
    if saved.exists():
        stored = json.loads(saved.read_text())
        if stored["config"] == json.loads(json.dumps(config_to_dict(config))):  # compared as JSON reads it back
            return stored["result"]
    result = centralised_ldmlr(config, steps)
    atomic_write_text(saved, json.dumps({"config": config_to_dict(config), "result": result}))
    return result


def total_bytes(results: dict) -> int:
    rounds = results.get("rounds", []) + results.get("head_rounds", [])
    warm = results.get("warmup", {})
    return (
        sum(r["up_bytes"] + r["down_bytes"] for r in rounds)
        + results["setup"]["up_bytes"]
        + results["setup"]["down_bytes"]
        + (warm.get("up_bytes", 0) + warm.get("down_bytes", 0))
    )


def to_target(results: dict, target: float) -> dict | None:
    """The first round whose classifier reaches `target` % on the test set, and the MB spent by
    then: the probe head on pseudo-features for the denoiser algorithms, the global head (CReFF:
    the re-trained head) for the baselines."""
    spent = results["setup"]["up_bytes"] + results["setup"]["down_bytes"]
    spent += results.get("warmup", {}).get("up_bytes", 0) + results.get("warmup", {}).get("down_bytes", 0)
    denoiser = "rounds" in results
    for entry in results["rounds"] if denoiser else results["head_rounds"]:
        spent += entry["up_bytes"] + entry["down_bytes"]
        accuracy = entry.get("probe_acc") if denoiser else entry.get("creff_acc", entry["acc"])
        if accuracy is not None and accuracy >= target:
            return {"round": entry["round"], "mb": spent / 1e6}
    return None


def summary_row(name: str, results: dict, setting: dict, target: float, adjusted: bool = False) -> dict:
    summary = results[next(key for key in ("refined", "creff", "head", "pseudo_only") if key in results)]
    return {
        "method": name,
        "acc": summary["acc_adjusted" if adjusted else "acc"],
        "pseudo_only": results.get("pseudo_only", {}).get("acc"),
        "frechet": results.get("pseudo_frechet_test"),
        "bytes": total_bytes(results),
        "warmup_bytes": results.get("warmup", {}).get("up_bytes"),
        "rounds_run": len(results.get("rounds", [])),
        "missing": sum(len(r["missing"]) for r in results.get("rounds", []) + results.get("head_rounds", [])),
        "to_target": to_target(results, target),
        "wall_s": results["wall_s"],
        **setting,
    }


def one_federation(dataset: str, seed: int, features: Path, args: argparse.Namespace, workdir: Path, report: dict) -> None:
    prefix = f"{dataset}-s{seed}"
    rows = report["rows"]
    setting = {"dataset": dataset, "seed": seed}
    target = args.targets[dataset]
    head_ce = run_or_reuse(
        config_for(dataset, seed, f"{prefix}-head-ce", features, {"algorithm": "fedavg_head", "head_loss": "ce"}), workdir
    )
    rows.append(summary_row("FedAvg head (CE)", head_ce, setting | {"private": False}, target))
    rows.append(summary_row("FedAvg head (CE, post-hoc adjusted)", head_ce, setting | {"private": False}, target, adjusted=True))
    head_la = run_or_reuse(config_for(dataset, seed, f"{prefix}-head-la", features, {"algorithm": "fedavg_head"}), workdir)
    rows.append(summary_row("FedAvg head (logit-adjusted loss)", head_la, setting | {"private": False}, target))
    creff = run_or_reuse(config_for(dataset, seed, f"{prefix}-creff", features, {"algorithm": "creff"}), workdir)
    rows.append(summary_row("CReFF", creff, setting | {"private": False}, target))
    for private in (False, True) if seed in args.private_seeds.get(dataset, []) else (False,):
        privacy = {"epsilon": 10.0} if private else None
        tag = "-dp" if private else ""
        source = None
        for algorithm in DENOISERS if not private else args.private_algorithms:
            federated = {"algorithm": algorithm, "warmup_from": str(workdir / source) if source else ""}
            config = config_for(dataset, seed, f"{prefix}{tag}-{algorithm}", features, federated, privacy)
            results = run_or_reuse(config, workdir)
            source = source or config.name
            rows.append(summary_row(algorithm, results, setting | {"private": private}, target))
            report["curves"].setdefault(f"{dataset}{tag}", {}).setdefault(algorithm, []).append(curve(results))
    looser = {"algorithm": "progressive", "refresh_score_ratio": 2.0, "warmup_from": str(workdir / f"{prefix}-fedavg")}
    results = run_or_reuse(config_for(dataset, seed, f"{prefix}-progressive-looser", features, looser), workdir)
    rows.append(summary_row("progressive (refresh range ×2)", results, setting | {"private": False}, target))
    if seed in args.model_upload_seeds:
        config = config_for(dataset, seed, f"{prefix}-fedddpm-model-upload", features, {"algorithm": "fedddpm", "warmup_upload": "model"})
        rows.append(summary_row("fedddpm (warm-up uploads models)", run_or_reuse(config, workdir), setting | {"private": False}, target))
    central = central_or_reuse(config_for(dataset, seed, f"{prefix}-central", features, {}), args.central_steps, workdir)
    rows.append(
        {
            "method": "centralised LDMLR",
            "acc": central["summary"]["acc"],
            "frechet": central["pseudo_frechet_test"],
            "bytes": None,
            "wall_s": central["wall_s"],
            **setting,
            "private": False,
        }
    )


def curve(results: dict) -> list[dict]:
    """Probe accuracy and Fréchet distance against rounds and cumulative bytes."""
    spent = results["setup"]["up_bytes"] + results["setup"]["down_bytes"] + results["warmup"]["up_bytes"] + results["warmup"]["down_bytes"]
    points = []
    for entry in results["rounds"]:
        spent += entry["up_bytes"] + entry["down_bytes"]
        if "probe_acc" in entry:
            points.append({"round": entry["round"], "bytes": spent, "acc": entry["probe_acc"], "frechet": entry["probe_frechet"]})
    return points


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for setting, by_algorithm in report["curves"].items():
        figure, axes = plt.subplots(2, 2, figsize=(10, 7))
        for algorithm, curves in by_algorithm.items():
            points = curves[0]
            for row, metric in enumerate(("acc", "frechet")):
                axes[row][0].plot([p["round"] for p in points], [p[metric] for p in points], marker="o", label=algorithm)
                axes[row][1].plot([p["bytes"] / 1e6 for p in points], [p[metric] for p in points], marker="o", label=algorithm)
        for row, metric in enumerate(("probe head accuracy (%)", "probe Fréchet distance to test")):
            axes[row][0].set_ylabel(metric)
            axes[row][0].set_xlabel("round")
            axes[row][1].set_xlabel("cumulative MB (setup + warm-up + rounds)")
        axes[0][0].legend()
        figure.suptitle(f"{setting}: seed 0")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        plt.close(figure)
        atomic_write_bytes(out.parent / f"{out.name}_{setting}.png", buffer.getvalue())


def markdown(report: dict) -> str:
    run_minutes = sum(r["wall_s"] for r in report["rows"] if r["wall_s"] is not None and "post-hoc" not in r["method"]) / 60
    lines = [
        "# Federated LDMLR (20 Dirichlet(0.5) clients, 8 per round, IF = 100)",
        "",
        f"Generated by `{report['command']}` on {report['machine']}; {report['threads']} torch threads, one job at a time."
        f" Runs took {run_minutes:.1f} min in all (each run's own time; the features are encoded once per dataset)."
        f" Seeds {report['seeds']}; final round, no selection on the test set.",
        "",
        "- **Accuracy**: top-1 % on the balanced test set, mean ± std over seeds (n = seeds in the row). For the denoiser"
        " algorithms, the server's head trained on pseudo-features, then refined by FedAvg of the head (logit-adjusted"
        " loss); *pseudo-only* is that head before refinement (the private runs stop there).",
        "- **Fréchet**: mean per-class distance of the final pseudo-features to the test features (lower is better).",
        "- **MB**: every serialised message of the run (setup statistics, warm-up, rounds, head rounds), mean over seeds.",
        "- **to target**: rounds and MB until the round's classifier reaches "
        + ", ".join(f"{value:g} % on {dataset}" for dataset, value in report["targets"].items())
        + " (seeds that reached it): the probe head on pseudo-features for the denoiser algorithms, the global head for the baselines.",
        "",
    ]
    for dataset in report["datasets"]:
        for private in (False, True):
            rows = [r for r in report["rows"] if r["dataset"] == dataset and r["private"] == private]
            if not rows:
                continue
            lines += [f"## {dataset}{' — ε = 10 per client (δ = 1e-5)' if private else ''}", ""]
            header = "| method | n | " + " | ".join(GROUPS) + " | pseudo-only | Fréchet | MB | to target: rounds / MB | missing replies |"
            lines += [header, "|---" * 11 + "|"]
            for method in dict.fromkeys(r["method"] for r in rows):
                group = [r for r in rows if r["method"] == method]
                accs = [" " + fmt_mean_std([r["acc"][g] for r in group]) for g in GROUPS]
                pseudo = fmt_mean_std([r["pseudo_only"]["overall"] if r.get("pseudo_only") else None for r in group])
                frechet = fmt_mean_std([r.get("frechet") for r in group])
                megabytes = fmt(statistics.mean(r["bytes"] for r in group) / 1e6, 1) if group[0]["bytes"] is not None else "–"
                reached = [r["to_target"] for r in group if r.get("to_target")]
                target = "–" if group[0]["bytes"] is None else f"not reached (0/{len(group)})"
                if reached:
                    rounds, spent = statistics.mean(t["round"] for t in reached), statistics.mean(t["mb"] for t in reached)
                    target = f"{rounds:.1f} / {spent:.1f} ({len(reached)}/{len(group)})"
                missing = sum(r.get("missing", 0) for r in group)
                lines.append(f"| {method} | {len(group)} |{' |'.join(accs)} | {pseudo} | {frechet} | {megabytes} | {target} | {missing} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def seeds_by_dataset(text: str) -> dict[str, list[int]]:
    pairs = [item.split("=") for item in text.split(",") if item]
    return {dataset: [int(seed) for seed in seeds.split(":") if seed] for dataset, seeds in pairs}


def targets_by_dataset(text: str) -> dict[str, float]:
    return {dataset: float(value) for dataset, value in (item.split("=") for item in text.split(",") if item)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model-upload-seeds", nargs="*", type=int, default=[0])
    parser.add_argument(
        "--private-seeds", type=seeds_by_dataset, default=seeds_by_dataset("cifar10=0:1:2"), help="e.g. cifar10=0:1:2,cifar100=0"
    )
    parser.add_argument("--private-algorithms", nargs="+", default=["fedddpm"], choices=DENOISERS)
    parser.add_argument(
        "--targets",
        type=targets_by_dataset,
        default=targets_by_dataset("cifar10=60,cifar100=20"),
        help="test accuracy %% for rounds/MB to target",
    )
    parser.add_argument("--central-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "federated")
    args = parser.parse_args()
    keep_torch_caches_in_featdiff_cache()
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="featdiff-federated-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "threads": args.threads,
        "command": shlex.join(["python", "benchmarks/federated.py", *sys.argv[1:]]),
        "datasets": args.datasets,
        "seeds": args.seeds,
        "targets": args.targets,
        "rows": [],
        "curves": {},
    }
    for dataset in args.datasets:
        features = workdir / f"{dataset}-features.safetensors"
        if not features.exists():
            export_features(config_for(dataset, 0, f"{dataset}-encode", features, {}), features)
        for seed in args.seeds:
            one_federation(dataset, seed, features, args, workdir, report)
            report["wall_s"] = time.perf_counter() - started
            write_report(args.out, report, markdown(report))
            print(f"{dataset} seed {seed} done after {report['wall_s'] / 60:.1f} min", file=sys.stderr)
    plot(report, args.out)
    report["wall_s"] = time.perf_counter() - started
    write_report(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
