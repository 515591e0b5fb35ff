"""Benchmark: federated feature diffusion against its free and cheap controls (issues 11 and 18).

LDMLR's shipped IF = 100 encoders' features, spread over Dirichlet(α) clients, the Flower apps on
featdiff's in-process grid (the same apps and messages as the simulation engine and a SuperLink;
a function call as transport, so 2 cores train instead of starting Ray workers). Per federation
(dataset, α, clients, clients per round, seed), every denoiser algorithm shares one warm-up
(`federated.warmup_from`), and beside them run:
- the LA FedAvg head (FedAvg of the linear head with the logit-adjusted loss) and CReFF;
- `gaussian_stats`, the class Gaussian of the setup's aggregated statistics (free: every denoiser
  run computes it, no byte beyond the setup), with the same pseudo count and head recipe;
- FedDDPM as published (`correction: fixed`) beside featdiff's scored correction;
- centralised featdiff on the pooled features: LDMLR (balanced fill) and the class Gaussian
  (pseudo-only), the same recipes.
Every accuracy is the report part of the test set with τ chosen on its validation part, for the
head each run chose on the validation part (pseudo-only, or refined by FedAvg of the head: a
stand-in for a server-side validation set).

    python benchmarks/federated.py                      # preset default: α = 0.5, 20 clients (8 per round), both datasets, 3 seeds
    python benchmarks/federated.py --preset harder      # α ∈ {0.5, 0.1} × {20 (8), 50 (10)} clients, both datasets, 3 seeds
    python benchmarks/federated.py --preset private     # ε ∈ {10, 3} per client, CIFAR-10, 3 seeds: DP controls beside the release
    python benchmarks/federated.py --preset harder --render  # rewrite a preset's markdown from its JSON (runs nothing)

The harder and private sweeps are run in parts, so that no part passes an hour on 2 cores: a seed
and a dataset per part (`--preset harder --seeds 1 --datasets cifar10`, 20-23 min on 1 thread beside
another such part; `--datasets cifar100`, 28-29 min), one seed per part (`--preset private --seeds 1`,
13-15 min).
A part merges into the preset's existing report: it replaces that report's rows for the seeds and
datasets it ran, keeps the others, and records its own command and wall time under `parts`.

`--workdir DIR` keeps the run folders and reuses finished runs whose saved config matches; each
preset writes benchmarks/results/federated[_<preset>].{json,md} (and plots of the probe against
rounds and bytes, lowest seed). Each federation's table ends with issue 18's goals, judged on the
unrounded means over seeds.
"""

from __future__ import annotations

import argparse
import copy
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
from featdiff.errors import UserError, exit_status
from featdiff.evaluation.diagnostics import compare
from featdiff.evaluation.metrics import summarize
from featdiff.evaluation.protocol import part_summaries, split_test_set
from featdiff.federated.client_app import make_client_app
from featdiff.federated.head import train_head
from featdiff.federated.local_grid import InProcessGrid
from featdiff.federated.server_app import serve
from featdiff.federated.task import encoded_features
from featdiff.generation.gaussian import ClassGaussian
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, balanced_counts, build_denoiser, clip_range, schedule_for
from featdiff.io import atomic_write_bytes, atomic_write_text
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.pipeline import export_features
from featdiff.report import GROUPS, fmt, fmt_mean_std, write_report
from featdiff.runs import RESULTS_FILE
from featdiff.seeding import initialise, named_generator, reset_parameters
from featdiff.statistics import SufficientStatistics
from featdiff.training.denoiser import denoiser_state, train_denoiser

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar-lt"
RESULTS = ROOT / "benchmarks" / "results"
BASE_CONFIG = ROOT / "configs" / "federated_cifar10_lt.yaml"
DENOISERS = ("fedavg", "fedddpm", "fedddpm_plus", "progressive")
LA_HEAD = "LA FedAvg head (control)"
FREE_CONTROL = "gaussian_stats (free control)"
FIXED_CORRECTION = "fedddpm (as published: fixed correction)"
CENTRAL_LDMLR = "centralised LDMLR"
PRIVATE_GOAL_EPSILON = 10.0
"""Issue 18 states its private goals (≥ 70 %, ≥ the best private control) at this per-client ε."""
PER_DATASET = {
    "cifar10": {"aux_per_class": 100, "pseudo_per_class": 300, "probe_per_class": 50},
    "cifar100": {"aux_per_class": 30, "pseudo_per_class": 60, "probe_per_class": 10},
}
PRESETS = {
    "default": {"federations": [(d, 0.5, 20, 8) for d in ("cifar10", "cifar100")], "seeds": [0, 1, 2], "epsilons": []},
    "harder": {
        "federations": [
            (d, a, k, m) for d in ("cifar10", "cifar100") for a in (0.5, 0.1) for k, m in ((20, 8), (50, 10)) if (a, k) != (0.5, 20)
        ],
        "seeds": [0, 1, 2],
        "epsilons": [],
    },
    "private": {"federations": [("cifar10", 0.5, 20, 8)], "seeds": [0, 1, 2], "epsilons": [10.0, 3.0]},
}


def per_client_budget(epsilon: float) -> str:
    """The suffix a private federation's setting name carries; the goal readout finds its ε by it."""
    return f", ε = {epsilon:g} per client"


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
            raise UserError(f"{folder} holds a run with another config; choose another --workdir")
        return json.loads((folder / RESULTS_FILE).read_text())
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished run of this benchmark: start it again
    config_path = workdir / f"{config.name}.yaml"
    config_path.write_text(dump_config(config))
    settings = {"config": str(config_path), "run-dir": str(folder)}
    started = time.perf_counter()
    results = serve(InProcessGrid(make_client_app(settings), config.federated.clients, settings), settings)
    results["wall_s"] = time.perf_counter() - started
    print(f"  {config.name}: {results['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return results


def protocol_summary(config: RunConfig, head: torch.nn.Module, tensors: dict, counts: torch.Tensor, prior: torch.Tensor) -> dict:
    """A centralised head's summary with the validation and report parts, as a federated run's."""
    with torch.inference_mode():
        logits = head(tensors["test_features"])
    labels = tensors["test_labels"]
    parts = split_test_set(labels, config.evaluation.validation_fraction, config.evaluation.validation_seed)
    return summarize(logits, labels, counts, prior=prior) | part_summaries(logits, labels, parts, counts, prior=prior, index_groups=False)


def centralised(config: RunConfig, steps: int) -> dict:
    """Centralised featdiff on the pooled training features (what a single holder of all records
    would do), with the federation's head recipe: LDMLR (`steps` denoiser steps, real features plus
    pseudo-features filling every class up to the largest) and the class Gaussian (pseudo-only,
    `pseudo_per_class` per class)."""
    started = time.perf_counter()
    tensors = encoded_features(config.federated.features)
    features, labels = tensors["train_features"], tensors["train_labels"]
    classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=classes)
    scaler = Standardizer.fitted(features)
    diffusion = config.diffusion.model_copy(update={"steps": steps})
    model = initialise(build_denoiser(features.shape[1], classes, diffusion), named_generator(config.seed, "central-init"))
    schedule = schedule_for(diffusion)
    state = denoiser_state(
        model,
        len(labels),
        diffusion,
        named_generator(config.seed, "central-denoiser/data"),
        draws=named_generator(config.seed, "central-denoiser/diffusion"),
    )
    train_denoiser(state, scaler.encode(features), labels, schedule, diffusion)
    scaled = scaler.encode(features)
    generator = FeatureGenerator(state.ema.module.eval(), scaler, clip_range(scaled, diffusion), schedule, diffusion.resolved_prediction())
    pseudo, pseudo_labels = generator.generate(
        balanced_counts(counts), SamplerSettings.of(diffusion), named_generator(config.seed, "central-pseudo")
    )
    head = torch.nn.Linear(features.shape[1], classes)
    reset_parameters(head, named_generator(config.seed, "central-head"))
    combined = torch.cat([labels, pseudo_labels])
    train_head(
        head,
        torch.cat([features, pseudo]),
        combined,
        config.classifier,
        named_generator(config.seed, "central-train"),
        logit_adjusted=False,
    )
    trained = torch.bincount(combined, minlength=classes).double()
    ldmlr = protocol_summary(config, head, tensors, counts, trained / trained.sum())
    gaussian = ClassGaussian.fitted(SufficientStatistics.of(features, labels, classes), config.generation.shrinkage)
    per_class = torch.full((classes,), config.federated.pseudo_per_class)
    drawn, drawn_labels = gaussian.generate(per_class, named_generator(config.seed, "central-gaussian"))
    gaussian_head = torch.nn.Linear(features.shape[1], classes)
    reset_parameters(gaussian_head, named_generator(config.seed, "central-head"))
    train_head(gaussian_head, drawn, drawn_labels, config.classifier, named_generator(config.seed, "central-train"), logit_adjusted=False)
    uniform = torch.full((classes,), 1.0 / classes, dtype=torch.float64)
    return {
        "ldmlr": ldmlr,
        "ldmlr_frechet_test": compare(tensors["test_features"], tensors["test_labels"], pseudo, pseudo_labels, classes)["mean_frechet"],
        "gaussian": protocol_summary(config, gaussian_head, tensors, counts, uniform),
        "wall_s": time.perf_counter() - started,
    }


def central_or_reuse(config: RunConfig, steps: int, workdir: Path) -> dict:
    saved = workdir / f"{config.name}-{steps}-central.json"
    if saved.exists():
        stored = json.loads(saved.read_text())
        if stored["config"] == json.loads(json.dumps(config_to_dict(config))):  # compared as JSON reads it back
            return stored["result"]
    result = centralised(config, steps)
    atomic_write_text(saved, json.dumps({"config": config_to_dict(config), "result": result}))
    return result


def total_bytes(results: dict) -> int:
    """Every message of the run; the free control's head rounds are the control's, not the run's."""
    rounds = results.get("rounds", []) + results.get("head_rounds", [])
    warm = results.get("warmup", {})
    return (
        sum(r["up_bytes"] + r["down_bytes"] for r in rounds)
        + results["setup"]["up_bytes"]
        + results["setup"]["down_bytes"]
        + (warm.get("up_bytes", 0) + warm.get("down_bytes", 0))
    )


def reported(summary: dict) -> dict:
    """A head's report-part accuracies with τ chosen on the validation part."""
    return summary["tuned"]["report"]["acc"]


def row(method: str, results: dict, key: str, setting: dict, *, nbytes: int | None = None) -> dict:
    """One table row: the head `key` names (a results key, or the run's own choice `chosen`)."""
    summary = results[results[key]] if key in ("chosen", "gaussian_stats_chosen") else results[key]
    rounds = results.get("rounds", []) if key == "chosen" else []
    refreshes = [r for r in rounds if "refreshed" in r]
    return {
        "method": method,
        "acc": reported(summary),
        "head": results[key] if key in ("chosen", "gaussian_stats_chosen") else key,
        "pseudo_only": reported(results["pseudo_only"]) if "pseudo_only" in results and key == "chosen" else None,
        "frechet": results.get("pseudo_frechet_test") if key == "chosen" else results.get("gaussian_stats_frechet_test"),
        "bytes": total_bytes(results) if nbytes is None else nbytes,
        "rounds_run": len(rounds),
        "refresh_rate": (sum(r["refreshed"] for r in refreshes) / len(rounds)) if refreshes else None,
        "bank_frechet": [rounds[0]["bank_frechet"], rounds[-1]["bank_frechet"]] if rounds and "bank_frechet" in rounds[0] else None,
        "epsilon": results.get("max_client_epsilon", results.get("warmup", {}).get("max_client_epsilon")),
        "missing": sum(len(r["missing"]) for r in rounds + results.get("head_rounds", [])),
        "wall_s": results["wall_s"],
        **setting,
    }


def run_prefix(federation: tuple, seed: int) -> str:
    dataset, alpha, clients, per_round = federation
    return f"{dataset}-a{alpha:g}-k{clients}-m{per_round}-s{seed}"


def reused_runs(workdir: Path, federations: list[tuple], seeds: list[int], started_at: float) -> int:
    """Finished runs of this part that an earlier invocation had written (their time is not in this part's)."""
    saved = [
        path
        for federation in federations
        for seed in seeds
        for pattern in (f"{run_prefix(federation, seed)}-*/{RESULTS_FILE}", f"{run_prefix(federation, seed)}-*-central.json")
        for path in workdir.glob(pattern)
    ]
    return sum(path.stat().st_mtime < started_at for path in saved)


def merged_report(out: Path, fresh: dict, federations: list[tuple], seeds: list[int]) -> dict:
    """The preset's existing report with this part's rows and curves taken out (they are rerun), or
    `fresh` when there is none. A report of another preset or round count is not merged into."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return copy.deepcopy(fresh)
    existing = json.loads(path.read_text())
    if (existing["preset"], existing["rounds"]) != (fresh["preset"], fresh["rounds"]):
        raise UserError(f"{path} holds preset {existing['preset']!r} with {existing['rounds']} rounds; choose another --out")
    datasets = {f[0] for f in federations}
    if "curve_seed" not in existing:  # written before parts: one list of curves per seed, the first seed's first
        first = min(existing["seeds"])
        existing["curves"] = {name: {label: curves[0] for label, curves in by.items()} for name, by in existing["curves"].items()}
        existing["curve_seed"] = dict.fromkeys(existing["curves"], first)
    if "parts" not in existing:
        existing["parts"] = [
            {
                "command": existing.pop("command"),
                "seeds": existing["seeds"],
                "datasets": sorted({r["dataset"] for r in existing["rows"]}),
                "threads": existing["threads"],
                "wall_s": existing.pop("wall_s"),
                "reused": None,  # not recorded then
            }
        ]
    existing["rows"] = [r for r in existing["rows"] if not (r["dataset"] in datasets and r["seed"] in seeds)]
    kept = []
    for part in existing["parts"]:  # a part keeps the seeds this one does not rerun; one rerun whole is dropped
        if set(part["datasets"]) <= datasets:
            part = part | {"seeds": [s for s in part["seeds"] if s not in seeds]}
        if part["seeds"]:
            kept.append(part)
    existing["parts"] = kept
    for name in [name for name in existing["curve_seed"] if not any(r["setting"] == name for r in existing["rows"])]:
        del existing["curve_seed"][name], existing["curves"][name]  # their seed is being rerun
    existing["seeds"] = sorted({r["seed"] for r in existing["rows"]} | set(seeds))
    existing["federations"] = [list(f) for f in dict.fromkeys(map(tuple, existing["federations"] + [list(f) for f in federations]))]
    return existing


def with_part(report: dict, mine: dict, part: dict) -> dict:
    """`report` (re-read from disk just before each write, so that parts running side by side keep each
    other's rows) with this part's rows, curves and record added."""
    report["rows"] += mine["rows"]
    report["parts"].append(dict(part))
    for name, by_label in mine["curves"].items():
        for label, points in by_label.items():
            keep_curve(report, {"setting": name, "seed": mine["curve_seed"][name]}, label, points)
    return report


def one_federation(federation: tuple, seed: int, features: Path, args: argparse.Namespace, workdir: Path, mine: dict) -> None:
    """Runs one federation's methods for one seed (or reuses their finished runs) into `mine`'s rows and curves."""
    dataset, alpha, clients, per_round = federation
    prefix = run_prefix(federation, seed)
    shape = {"alpha": alpha, "clients": clients, "clients_per_round": per_round, "rounds": args.rounds}
    setting = {"setting": f"{dataset}, α = {alpha:g}, {clients} clients ({per_round} per round)", "dataset": dataset, "seed": seed}
    rows = mine["rows"]

    def config(name: str, federated: dict, privacy: dict | None = None) -> RunConfig:
        return config_for(dataset, seed, f"{prefix}-{name}", features, shape | federated, privacy)

    if not args.epsilons:
        head = run_or_reuse(config("head-la", {"algorithm": "fedavg_head"}), workdir)
        rows.append(row(LA_HEAD, head, "head", setting))
        creff = run_or_reuse(config("creff", {"algorithm": "creff"}), workdir)
        rows.append(row("CReFF", creff, "creff", setting))
        source = None
        variants = [(a, a, {}) for a in DENOISERS] + [(FIXED_CORRECTION, "fedddpm", {"correction": "fixed"})]
        for label, algorithm, extra in variants:
            name = algorithm if not extra else "fedddpm-fixed"
            federated = {"algorithm": algorithm, "warmup_from": str(workdir / source) if source else "", **extra}
            results = run_or_reuse(config(name, federated), workdir)
            source = source or f"{prefix}-{name}"
            rows.append(row(label, results, "chosen", setting))
            if algorithm == "fedavg" and not extra:
                control_bytes = results["setup"]["up_bytes"] + results["setup"]["down_bytes"] + total_head_round_bytes(results)
                rows.append(row(FREE_CONTROL, results, "gaussian_stats_chosen", setting, nbytes=control_bytes))
            keep_curve(mine, setting, label, curve(results))
        central = central_or_reuse(config("central", {}), args.central_steps, workdir)
        for key, label in (("ldmlr", CENTRAL_LDMLR), ("gaussian", "centralised class Gaussian")):
            rows.append({"method": label, "acc": reported(central[key]), "bytes": None, "wall_s": central["wall_s"], **setting})
        return
    for epsilon in args.epsilons:
        privacy = {"epsilon": epsilon}
        tag = f"dp{epsilon:g}"
        private_setting = setting | {"setting": setting["setting"] + per_client_budget(epsilon)}
        head = run_or_reuse(config(f"{tag}-head", {"algorithm": "fedavg_head"}, privacy), workdir)
        rows.append(row("DP-FedAvg LA head (control)", head, "head", private_setting))
        stats = run_or_reuse(config(f"{tag}-stats", {"algorithm": "gaussian_stats"}, privacy), workdir)
        rows.append(row("DP class statistics' Gaussian (control)", stats, "gaussian_stats_chosen", private_setting))
        release = run_or_reuse(config(f"{tag}-fedddpm", {"algorithm": "fedddpm"}, privacy), workdir)
        rows.append(row("FedDDPM release (pseudo-only)", release, "chosen", private_setting))
        combined = {"algorithm": "fedddpm", "private_refine": True}
        refined = run_or_reuse(config(f"{tag}-fedddpm-refine", combined, privacy | {"release_share": 0.5}), workdir)
        rows.append(row("FedDDPM release + DP-FedAvg head (half the budget each)", refined, "chosen", private_setting))


def keep_curve(report: dict, setting: dict, label: str, points: list[dict]) -> None:
    """The plots show one seed per federation, the lowest the report holds."""
    name = setting["setting"]
    stored = report["curve_seed"].get(name)
    if stored is not None and stored < setting["seed"]:
        return
    if stored != setting["seed"]:
        report["curves"][name] = {}
        report["curve_seed"][name] = setting["seed"]
    report["curves"][name][label] = points


def total_head_round_bytes(results: dict) -> int:
    return sum(r["up_bytes"] + r["down_bytes"] for r in results.get("gaussian_stats_head_rounds", []))


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

    for number, (setting, by_algorithm) in enumerate(report["curves"].items()):
        figure, axes = plt.subplots(2, 2, figsize=(10, 7))
        for algorithm, points in by_algorithm.items():
            for r, metric in enumerate(("acc", "frechet")):
                axes[r][0].plot([p["round"] for p in points], [p[metric] for p in points], marker="o", label=algorithm)
                axes[r][1].plot([p["bytes"] / 1e6 for p in points], [p[metric] for p in points], marker="o", label=algorithm)
        for r, metric in enumerate(("probe head accuracy (%, full test set)", "probe Fréchet distance to test")):
            axes[r][0].set_ylabel(metric)
            axes[r][0].set_xlabel("round")
            axes[r][1].set_xlabel("cumulative MB (setup + warm-up + rounds)")
        axes[0][0].legend(fontsize=7)
        figure.suptitle(f"{setting}: seed {report['curve_seed'][setting]}")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        plt.close(figure)
        atomic_write_bytes(out.parent / f"{out.name}_{number}.png", buffer.getvalue())


def goal_lines(rows: list[dict]) -> list[str]:
    """Issue 18's goals for one federation, judged on the unrounded means over seeds of its rows, so that
    the README's claims are read off the report, not computed by hand."""
    methods = dict.fromkeys(r["method"] for r in rows)
    acc = {m: statistics.mean(r["acc"]["overall"] for r in rows if r["method"] == m) for m in methods}
    if FREE_CONTROL not in acc:  # a private federation: the best release against the best private control
        controls = [m for m in methods if m.endswith("(control)")]
        release = max((m for m in methods if m not in controls), key=acc.get)
        control = max(controls, key=acc.get)
        stated = rows[0]["setting"].endswith(per_client_budget(PRIVATE_GOAL_EPSILON))
        return goal_table(
            [
                (f"best release ({release}) − 70 % ≥ 0", acc[release] - 70.0, acc[release] >= 70.0),
                (f"best release − best private control ({control}) ≥ 0", acc[release] - acc[control], acc[release] >= acc[control]),
            ],
            stated=stated,
        )
    best = max([*DENOISERS, FIXED_CORRECTION], key=acc.get)
    frechet = {m: statistics.mean(r["frechet"] for r in rows if r["method"] == m) for m in ("fedavg", "fedddpm", "progressive")}
    progressive = [r for r in rows if r["method"] == "progressive"]
    refreshes = statistics.mean(r["refresh_rate"] for r in progressive)
    bank_fall = statistics.mean(r["bank_frechet"][0] - r["bank_frechet"][1] for r in progressive)
    margins = {
        "free": acc[best] - acc[FREE_CONTROL],
        "head": acc[best] - acc[LA_HEAD],
        "central": acc[best] - acc[CENTRAL_LDMLR],
        "progressive": acc["progressive"] - max(acc["fedavg"], acc["fedddpm"]),
    }
    return goal_table(
        [
            (f"best denoiser (`{best}`) − `gaussian_stats` ≥ +0.5", margins["free"], margins["free"] >= 0.5),
            ("best denoiser − LA FedAvg head ≥ +1.0", margins["head"], margins["head"] >= 1.0),
            ("best denoiser − centralised LDMLR ≥ −0.5", margins["central"], margins["central"] >= -0.5),
            ("`progressive` − max(`fedavg`, `fedddpm`) ≥ 0", margins["progressive"], margins["progressive"] >= 0.0),
            ("`progressive`'s bank refreshes per round ≥ 0.25", refreshes, refreshes >= 0.25),
            ("`progressive`'s bank Fréchet, first − last round > 0", bank_fall, bank_fall > 0.0),
            (
                "Fréchet to test at the last round, `fedavg`'s − `fedddpm`'s ≥ 0",
                frechet["fedavg"] - frechet["fedddpm"],
                frechet["fedddpm"] <= frechet["fedavg"],
            ),
            (
                "Fréchet to test at the last round, `fedavg`'s − `progressive`'s ≥ 0",
                frechet["fedavg"] - frechet["progressive"],
                frechet["progressive"] <= frechet["fedavg"],
            ),
        ],
        stated=True,
    )


def goal_table(goals: list[tuple[str, float, bool]], *, stated: bool) -> list[str]:
    """(goal, measured margin or value, reached) as a markdown table; with `stated` False the issue sets
    no goal for this federation, and the margins stand without a verdict."""
    lines = ["Issue 18's goals (means over seeds):", "", "| goal | measured | reached |", "|---|---|---|"]
    for goal, margin, reached in goals:
        verdict = ("yes" if reached else "**no**") if stated else "no goal at this ε"
        lines.append(f"| {goal} | {margin:+.3f} | {verdict} |")
    return lines + [""]


def markdown(report: dict) -> str:
    lines = [
        f"# Federated feature diffusion against its controls (preset `{report['preset']}`, IF = 100)",
        "",
        f"Seeds {report['seeds']}; {report['rounds']} rounds; {report['machine']}. Generated in {len(report['parts'])} part(s),"
        " each one process, wall time as measured (a part that reused finished runs says how many):",
        "",
        *[
            f"- `{part['command']}`: seeds {part['seeds']}, {', '.join(part['datasets'])}; {part['wall_s'] / 60:.1f} min"
            f" on {part['threads']} torch thread(s)"
            + {None: ", runs reused not recorded", 0: ""}.get(part["reused"], f", {part['reused']} finished runs reused")
            for part in report["parts"]
        ],
        "",
        "- **Accuracy**: top-1 % on the report part of the test set, τ chosen on its validation part, mean ± std over seeds"
        " (n), for the head each run chose on the validation part (*pseudo-only* on the server's pseudo-features, or *refined*"
        " by FedAvg of the head with the logit-adjusted loss); *pseudo-only* is the former's accuracy.",
        "- **Fréchet**: mean per-class distance of the final pseudo-features to the test features (lower is better).",
        "- **MB**: every serialised message of the run (setup, warm-up, rounds, head rounds), mean over seeds; the free"
        " control's are the setup's plus its own head rounds.",
        "- **refreshes/round**: the progressive bank's refreshes per round; **bank Fréchet**: first → last round.",
        "",
    ]
    for setting in dict.fromkeys(r["setting"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["setting"] == setting]
        lines += [f"## {setting}", ""]
        lines += [
            "| method | n | "
            + " | ".join(GROUPS)
            + " | head | pseudo-only | Fréchet | MB | refreshes/round | bank Fréchet | ε (max client) |",
            "|---" * 13 + "|",
        ]
        for method in dict.fromkeys(r["method"] for r in rows):
            group = [r for r in rows if r["method"] == method]
            accs = [fmt_mean_std([r["acc"][g] for r in group]) for g in GROUPS]
            heads = ", ".join(sorted({r["head"] for r in group if r.get("head")})) or "–"
            pseudo = fmt_mean_std([r["pseudo_only"]["overall"] if r.get("pseudo_only") else None for r in group])
            frechet = fmt_mean_std([r.get("frechet") for r in group])
            megabytes = fmt(statistics.mean(r["bytes"] for r in group) / 1e6, 1) if group[0]["bytes"] is not None else "–"
            rates = [r["refresh_rate"] for r in group if r.get("refresh_rate") is not None]
            refresh = fmt(statistics.mean(rates), 2) if rates else "–"
            banks = [r["bank_frechet"] for r in group if r.get("bank_frechet")]
            bank = f"{statistics.mean(b[0] for b in banks):.2f} → {statistics.mean(b[1] for b in banks):.2f}" if banks else "–"
            epsilons = [r["epsilon"] for r in group if r.get("epsilon") is not None]
            epsilon = fmt(max(epsilons), 2) if epsilons else "–"
            lines.append(
                f"| {method} | {len(group)} | "
                + " | ".join(accs)
                + f" | {heads} | {pseudo} | {frechet} | {megabytes} | {refresh} | {bank} | {epsilon} |"
            )
        lines.append("")
        lines += goal_lines(rows)
    return "\n".join(lines) + "\n"


def render(out: Path) -> None:
    """Rewrites the markdown of the report at `out` from its JSON (numbers and provenance are the JSON's)."""
    path = out.with_suffix(".json")
    if not path.is_file():
        raise UserError(f"no report at {path}; run the preset first, or pass --out with the report's path without suffix")
    atomic_write_text(out.with_suffix(".md"), markdown(json.loads(path.read_text())))
    print(f"rendered {out.with_suffix('.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="default")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the preset's seeds")
    parser.add_argument("--datasets", nargs="+", choices=list(PER_DATASET), help="only these of the preset's federations")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--central-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/federated[_<preset>]")
    parser.add_argument(
        "--render", action="store_true", help="rewrite the preset's markdown from its JSON with today's renderer; run nothing"
    )
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    args.epsilons = preset["epsilons"]
    seeds = args.seeds or preset["seeds"]
    federations = [f for f in preset["federations"] if args.datasets is None or f[0] in args.datasets]
    out = args.out or RESULTS / ("federated" if args.preset == "default" else f"federated_{args.preset}")
    if args.render:
        render(out)
        return
    keep_torch_caches_in_featdiff_cache()
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="featdiff-federated-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started, started_at = time.perf_counter(), time.time()
    fresh = {
        "preset": args.preset,
        "machine": platform.processor() or platform.machine(),
        "seeds": seeds,
        "rounds": args.rounds,
        "federations": federations,
        "rows": [],
        "curves": {},
        "curve_seed": {},
        "parts": [],
    }
    mine = {"rows": [], "curves": {}, "curve_seed": {}}  # this part's own results; the report is rebuilt around them
    report = merged_report(out, fresh, federations, seeds)  # checked before any run, so a wrong --out fails at once
    part = {
        "command": shlex.join(["python", "benchmarks/federated.py", *sys.argv[1:]]),
        "seeds": seeds,
        "datasets": sorted({f[0] for f in federations}),
        "threads": args.threads,
        "wall_s": 0.0,
        "reused": 0,
    }
    for federation in federations:
        dataset = federation[0]
        features = workdir / f"{dataset}-features.safetensors"
        if not features.exists():
            export_features(config_for(dataset, 0, f"{dataset}-encode", features, {}), features)
        for seed in seeds:
            one_federation(federation, seed, features, args, workdir, mine)
            part |= {"wall_s": time.perf_counter() - started, "reused": reused_runs(workdir, federations, seeds, started_at)}
            report = with_part(merged_report(out, fresh, federations, seeds), mine, part)
            write_report(out, report, markdown(report))
            print(f"{federation} seed {seed} done after {part['wall_s'] / 60:.1f} min", file=sys.stderr, flush=True)
    plot(report, out)


if __name__ == "__main__":
    sys.exit(exit_status(main, "federated.py"))
