"""Benchmark: LDMLR with a differentially private feature denoiser (dp-promise's two phases) on
LDMLR's CIFAR-10/100-LT (IF = 100) encoders: utility against ε, membership inference, one-run
audits, Fréchet distance of the release, and wall time per phase.

Four parts, each measured one job at a time on this process's threads:
- utility: `featdiff run` with `method: ldmlr_dp` (configs/cifar10_lt_if100_dp.yaml, δ = 1e-5) per
  dataset, seed and ε; ε = ∞ is the same pipeline without clipping or noise. The first run of
  every seed also fits non-private LDMLR (`privacy.ldmlr_control`), so every row stands beside
  `fc_retrain` and `ldmlr` from the same seed. The public-encoder setting trains on CIFAR-10-LT
  features from the shipped CIFAR-100-LT encoder (disjoint images), DP end to end;
- Fréchet distance (mean over classes) of each release to the balanced test features, both in the
  public ball of radius R; the real training features' distance is the reference;
- membership inference (featdiff.privacy.experiments.membership_attacks): target on half the
  records, offline LiRA with `--shadows` shadow denoisers;
- one-run audits (canary_audit): every private ε on a `--audit-records` subset with `--canaries`
  canaries (batches scaled so rates, steps, σ and the claim are the full run's); the negative
  control (noise off, the smallest ε claimed); Phase I alone.

    python benchmarks/privacy.py [--seeds 0 1 2] [--datasets cifar10 cifar100] [--epsilons inf 10 5 1]

Every run and experiment uses seeded noise (`privacy.reproducible_noise: true`) so that the tables
can be reproduced; the report says so, and that its ε claims do not hold against anyone who knows
the seeds (real private runs draw their noise from the operating system's entropy).

Writes benchmarks/results/privacy.{json,md,png}. `--workdir DIR` keeps the run folders there and
reuses finished runs whose saved config matches, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from featdiff.config import RunConfig, config_from_dict, config_to_dict, load_config
from featdiff.data.bundle import load_dataset
from featdiff.errors import UserError, exit_status
from featdiff.evaluation.diagnostics import compare
from featdiff.features import EncodedDataset, encode_dataset
from featdiff.io import atomic_write_bytes, load_tensors
from featdiff.models.encoders import load_encoder
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.pipeline import execute
from featdiff.privacy.dp_promise import clip_to_norm
from featdiff.privacy.experiments import AuditSpec, audit_reference, canary_audit, membership_attacks
from featdiff.report import GROUPS, fmt, fmt_mean_std, write_report
from featdiff.runs import Run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar-lt"
RESULTS = ROOT / "benchmarks" / "results"
BASE_CONFIG = ROOT / "configs" / "cifar10_lt_if100_dp.yaml"
SUMMARY_KEYS = ("acc", "acc_adjusted", "acc_index", "acc_index_adjusted")


def encoder_path(dataset: str) -> Path:
    return DATA / f"ldmlr_resnet32_{dataset}_lt_if100.safetensors"


def setting_name(dataset: str, public: bool) -> str:
    return f"{dataset} (public CIFAR-100 encoder)" if public else dataset


def epsilon_label(epsilon: float) -> str:
    return "∞" if math.isinf(epsilon) else f"{epsilon:g}"


def run_config(dataset: str, public: bool, seed: int, epsilon: float, args: argparse.Namespace, ldmlr_control: bool) -> RunConfig:
    base = config_to_dict(load_config(BASE_CONFIG))
    base["name"] = f"{dataset}{'-public' if public else ''}-eps{epsilon_label(epsilon).replace('∞', 'inf')}-s{seed}"
    base["seed"] = seed
    base["data"] |= {"dataset": dataset, "root": str(DATA)}
    base["encoder"] |= {"checkpoint": str(encoder_path("cifar100" if public else dataset)), "public": public}
    base["privacy"] |= {
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "phase_two_epochs": args.phase_two_epochs,
        "ldmlr_control": ldmlr_control,
        "release_per_class": args.release_per_class[dataset],
        "reproducible_noise": True,  # replayable tables; the module docstring and the report say what it costs
    }
    return config_from_dict(base)


def run_or_reuse(config: RunConfig, workdir: Path) -> dict:
    """A finished run with the same config is reused (an interrupted benchmark continues)."""
    folder = workdir / config.name
    results = folder / "results.json"
    if results.exists():
        saved = json.loads(results.read_text())
        if saved["config"] != config_to_dict(config):
            raise UserError(f"{folder} holds a run with another config; choose another --workdir")
        return saved
    return execute(Run.create(folder, config))


def encoded_features(dataset: str, public: bool) -> EncodedDataset:
    placeholder = argparse.Namespace(phase_two_epochs=1.0, release_per_class={dataset: 1})
    config = run_config(dataset, public, 0, math.inf, placeholder, False)
    bundle = load_dataset(config.data, seed=0)
    encoder = load_encoder(Path(config.encoder.checkpoint), bundle.num_classes, torch.Generator().manual_seed(0) if public else None)
    return encode_dataset(encoder.eval(), bundle, config.features, 0, torch.device("cpu"))


def release_frechet(folder: Path, encoded: EncodedDataset, norm_bound: float, num_classes: int) -> float:
    release = load_tensors(folder / "dp_pseudo_features.safetensors", fix="rerun the benchmark with a fresh --workdir")
    test = clip_to_norm(encoded.test.features, norm_bound)
    return compare(test, encoded.test.labels, release["features"], release["labels"], num_classes)["mean_frechet"]


def utility_part(args: argparse.Namespace, workdir: Path, report: dict) -> None:
    settings = [(dataset, False) for dataset in args.datasets]
    if args.public and "cifar10" in args.datasets:
        settings.append(("cifar10", True))
    for dataset, public in settings:
        name = setting_name(dataset, public)
        encoded = encoded_features(dataset, public)
        num_classes = int(encoded.test.labels.max()) + 1
        entry = report["utility"].setdefault(name, {"runs": [], "real_train_frechet": None})
        real = encoded.train
        entry["real_train_frechet"] = compare(
            clip_to_norm(encoded.test.features, args.norm_bound),
            encoded.test.labels,
            clip_to_norm(real.features, args.norm_bound),
            real.labels,
            num_classes,
        )["mean_frechet"]
        seeds = args.public_seeds if public else args.seeds
        epsilons = args.public_epsilons if public else args.epsilons
        for seed in seeds:
            for index, epsilon in enumerate(epsilons):
                if epsilon in args.single_seed_epsilons and seed != seeds[0]:
                    continue
                with_ldmlr = index == 0 and seed in seeds[: args.ldmlr_seeds] and (args.public_ldmlr or not public)
                config = run_config(dataset, public, seed, epsilon, args, ldmlr_control=with_ldmlr)
                started = time.perf_counter()
                results = run_or_reuse(config, workdir)
                frechet = release_frechet(workdir / config.name, encoded, args.norm_bound, num_classes)
                ledger = results["privacy"]
                row = {
                    "seed": seed,
                    "epsilon": None if math.isinf(epsilon) else epsilon,
                    "epsilon_prv": ledger["epsilon_by_accountant"]["total"]["prv"],
                    "epsilon_clt": ledger["epsilon_by_accountant"]["total"]["clt"],
                    "epsilon_phase_one_prv": ledger["epsilon_by_accountant"]["phase_one"]["prv"],
                    "epsilon_per_record": ledger["epsilon_with_phase_one_per_record"],
                    "noise_multiplier": None if ledger["phase_two"] is None else ledger["phase_two"]["noise_multiplier"],
                    "phase_one": ledger["phase_one"],
                    "phase_two": ledger["phase_two"],
                    "real_plus_dp_pseudo": {k: results[k] for k in SUMMARY_KEYS if k in results},
                    "controls": results["controls"],
                    "release_frechet": frechet,
                    "stage_s": results["stage_s"],
                    "wall_s": results["wall_s"],
                }
                entry["runs"].append(row)
                print(
                    f"{name} ε={epsilon_label(epsilon)} seed {seed}: real+DP {results['acc']['overall']:.2f}, "
                    f"DP only {results['controls']['dp_pseudo_only']['acc']['overall']:.2f}, "
                    f"fc_retrain {results['controls']['fc_retrain']['acc']['overall']:.2f}, Fréchet {frechet:.2f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        entry["ldmlr_control_note"] = f"fit in the first run (ε = {epsilon_label(epsilons[0])}) of the first {args.ldmlr_seeds} seed(s)"


def mia_part(args: argparse.Namespace, report: dict) -> None:
    for dataset in args.mia_datasets:
        encoded = encoded_features(dataset, False)
        train = encoded.train
        num_classes = int(train.labels.max()) + 1
        for epsilon in args.mia_epsilons:
            config = run_config(dataset, False, args.seeds[0], epsilon, args, ldmlr_control=False)
            started = time.perf_counter()
            result = membership_attacks(
                config,
                train.features,
                train.labels,
                num_classes=num_classes,
                device=torch.device("cpu"),
                shadows=args.shadows,
                seed=args.seeds[0],
            )
            result["seconds"] = time.perf_counter() - started
            report["membership"].setdefault(dataset, {})[epsilon_label(epsilon)] = result
            print(
                f"MIA {dataset} ε={epsilon_label(epsilon)}: loss AUC {result['denoiser_loss']['auc']:.3f}, "
                f"LiRA AUC {result.get('lira_offline', {}).get('auc', float('nan')):.3f} ({result['seconds']:.0f} s)",
                flush=True,
            )


def audit_part(args: argparse.Namespace, report: dict) -> None:
    """Every private ε and the negative control on the same canaries and records, scored against
    one shared canary-free reference; Phase I alone against its own."""
    audit_args = argparse.Namespace(**vars(args) | {"phase_two_epochs": args.audit_phase_two_epochs})
    for dataset in args.audit_datasets:
        private = sorted(args.audit_epsilons[dataset])
        train = encoded_features(dataset, False).train
        num_classes = int(train.labels.max()) + 1
        audits = {f"ε = {epsilon_label(e)}, both phases": (e, "both", False) for e in reversed(private)}
        audits[f"negative control: ε = {epsilon_label(private[0])} claimed, noise off"] = (private[0], "both", True)
        if dataset in args.phase_one_audit_datasets:
            audits["phase I alone"] = (private[-1], "one", False)
        device, seed = torch.device("cpu"), args.audit_seed
        started = time.perf_counter()
        shared = AuditSpec("both", canaries=args.canaries, seed=seed, records=args.audit_records)
        reference = audit_reference(
            run_config(dataset, False, seed, private[0], audit_args, ldmlr_control=False),
            train.features, train.labels, num_classes=num_classes, device=device, spec=shared,
        )  # fmt: skip
        report["audit_reference_s"] = report.get("audit_reference_s", {}) | {dataset: time.perf_counter() - started}
        for name, (epsilon, phase, noise_off) in audits.items():
            config = run_config(dataset, False, seed, epsilon, audit_args, ldmlr_control=False)
            started = time.perf_counter()
            spec = AuditSpec(phase, canaries=args.canaries, seed=seed, records=args.audit_records, noise_off=noise_off)
            result = canary_audit(
                config, train.features, train.labels, num_classes=num_classes, device=device, spec=spec,
                reference=reference if phase == "both" else None,
            )  # fmt: skip
            result["seconds"] = time.perf_counter() - started
            report["audits"].setdefault(dataset, {})[name] = result
            bound, claimed = result["epsilon_lower_bound"], result["claimed_epsilon"]
            print(f"audit {dataset} {name}: ε_lo {bound:.2f} vs claimed {claimed:.2f}", flush=True)


def utility_lines(report: dict, epsilons: list[float]) -> list[str]:
    lines = [
        "## Utility (top-1 %, balanced test set, final epoch; mean ± std over seeds)",
        "",
        "`adj.` = post-hoc logit adjustment by the training prior of each classifier. `real + DP pseudo`: the classifier "
        "retrained on the real features and the DP release (LDMLR's use; only the release is private); `DP pseudo only`: "
        "a classifier on the release alone (as private as the release). `fc_retrain` and non-private `ldmlr` come from the "
        "same seeds' runs.",
        "",
        "| setting | ε | classifier | seeds | " + " | ".join(GROUPS) + " | " + " | ".join(f"{g} adj." for g in GROUPS) + " |",
        "|---|---|---|---|" + "---|" * (2 * len(GROUPS)),
    ]
    for name, entry in report["utility"].items():
        runs = entry["runs"]
        for control in ("fc_retrain", "ldmlr"):
            picked = [r["controls"][control] for r in first_run_per_seed(runs) if control in r["controls"]]
            if picked:
                lines.append(accuracy_row(name, "–", control + (" (non-private)" if control == "ldmlr" else ""), picked))
        for epsilon in epsilons:
            matching = runs_at(runs, epsilon)
            if not matching:
                continue
            label = epsilon_label(epsilon)
            lines.append(accuracy_row(name, label, "real + DP pseudo", [r["real_plus_dp_pseudo"] for r in matching]))
            lines.append(accuracy_row(name, label, "DP pseudo only", [r["controls"]["dp_pseudo_only"] for r in matching]))
    return lines


def first_run_per_seed(runs: list[dict]) -> list[dict]:
    """The controls are the same in every run of a seed (same features, same stage seeds)."""
    seen: dict[int, dict] = {}
    for run in runs:
        seen.setdefault(run["seed"], run)
    return list(seen.values())


def runs_at(runs: list[dict], epsilon: float) -> list[dict]:
    key = None if math.isinf(epsilon) else epsilon
    return [r for r in runs if r["epsilon"] == key]


def accuracy_row(setting: str, epsilon: str, label: str, summaries: list[dict]) -> str:
    plain = [fmt_mean_std([s["acc"][g] for s in summaries]) for g in GROUPS]
    adjusted = [fmt_mean_std([s["acc_adjusted"][g] for s in summaries]) for g in GROUPS]
    return f"| {setting} | {epsilon} | {label} | {len(summaries)} | " + " | ".join(plain + adjusted) + " |"


def seconds_of(runs: list[dict], *stages: str) -> float:
    return statistics.fmean(sum(r["stage_s"][stage] for stage in stages) for r in runs)


def privacy_lines(report: dict, epsilons: list[float]) -> list[str]:
    lines = [
        "## Privacy cost, release quality and wall time (seed means)",
        "",
        "ε by the tight PRV accountant (claimed) and by dp-promise's CLT formula, at δ = 1e-5; σ of Phase II; Fréchet "
        "distance of the release to the balanced test features (mean over classes, both in the public ball of radius R), "
        "beside the real training features' distance; seconds per phase (2 threads, one job at a time).",
        "",
        "| setting | ε target | ε tight | ε CLT | ε Phase I | ε, Phase I per record | σ | Fréchet (release) | Fréchet (real train) "
        "| phase I s | phase II s "
        "| generation s | classifiers s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["utility"].items():
        for epsilon in epsilons:
            matching = runs_at(entry["runs"], epsilon)
            if not matching:
                continue
            first = matching[0]
            lines.append(
                f"| {name} | {epsilon_label(epsilon)} | {fmt(first['epsilon_prv'], 3)} | {fmt(first['epsilon_clt'], 3)} | "
                f"{fmt(first['epsilon_phase_one_prv'], 3)} | {fmt(first.get('epsilon_per_record'), 3)} | "
                f"{fmt(first['noise_multiplier'], 3)} | "
                f"{fmt_mean_std([r['release_frechet'] for r in matching])} | {entry['real_train_frechet']:.2f} | "
                f"{seconds_of(matching, 'dp_phase_one_s'):.0f} | {seconds_of(matching, 'dp_phase_two_s'):.0f} | "
                f"{seconds_of(matching, 'dp_generation_s'):.1f} | {seconds_of(matching, 'classifier_s', 'dp_pseudo_classifier_s'):.1f} |"
            )
    return lines


def membership_lines(report: dict) -> list[str]:
    lines = [
        "## Membership inference (target on a random half of every class; 95 % intervals)",
        "",
        "Ceiling: the largest AUC / TPR the claimed (ε, δ) allows. Loss: the denoiser's loss at two timesteps chosen on a "
        "held-out fifth (shared noise seeds); LiRA: offline, shadow denoisers on complementary random halves; distance: to "
        "the closest "
        "released pseudo-feature; classifier: loss of a classifier trained on the release.",
        "",
        "| dataset | ε | attack | AUC [CI] | TPR @ 1 % FPR [CI] | TPR @ 0.1 % FPR [CI] | ceiling AUC | ceiling TPR @ 1 % | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    attacks = {
        "denoiser_loss": "denoiser loss",
        "lira_offline": "LiRA (offline)",
        "distance_to_release": "distance to release",
        "classifier_on_release_loss": "classifier loss",
    }
    for dataset, by_epsilon in report["membership"].items():
        for epsilon, result in by_epsilon.items():
            for key, label in attacks.items():
                if key not in result:
                    continue
                m = result[key]
                cells = [f"{m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]"]
                for fpr in ("0.01", "0.001"):
                    tpr = m[f"tpr_at_{fpr}"]
                    cells.append(f"{tpr['tpr']:.4f} [{tpr['ci'][0]:.4f}, {tpr['ci'][1]:.4f}]")
                ceiling = result["ceiling"]
                cells += [f"{ceiling['auc']:.3f}", f"{ceiling['tpr_at_0.01']:.4f}", f"{result['seconds']:.0f}"]
                lines.append(f"| {dataset} | {epsilon} | {label} | " + " | ".join(cells) + " |")
    return lines


def audit_lines(report: dict, args: argparse.Namespace) -> list[str]:
    lines = [
        "## One-run audits (Steinke, Nasr, Jagielski 2023)",
        "",
        f"{args.canaries} canaries (random directions at norm R, random labels, each included with probability ½) on a "
        f"random {args.audit_records}-record subset, batches scaled so sampling rates, steps, σ and the claimed ε are the "
        f"full run's; the audited mechanism is the shipped config's (Phase II {args.audit_phase_two_epochs:g} epochs: more "
        "steps at smaller σ than the utility runs above; at 15 epochs the negative control had too little power); seed "
        f"{args.audit_seed}. Scores: each canary's drop in denoising loss against one canary-free, noise-off reference run "
        "on the same records (Phase I alone: its own reference), at t = 100–700 (Phase I: S + 1…50); 95 % confidence, "
        "Bonferroni over three guess counts. Every private run must give ε_lo ≤ its claim; the negative control (noise off, "
        "same claim) must exceed it; Phase I alone tests dp-promise's argument that the forward noise alone is private.",
        "",
        "| dataset | audit | claimed ε | ε_lo | guesses | correct | σ audit / full run | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, audits in report["audits"].items():
        for name, a in audits.items():
            sigma = "–" if a["noise_multiplier"] is None else f"{a['noise_multiplier']:.3f} / {a['full_run_noise_multiplier']:.3f}"
            lines.append(
                f"| {dataset} | {name} | {a['claimed_epsilon']:.3f} | {a['epsilon_lower_bound']:.3f} | {a['guesses']} | {a['correct']} | "
                f"{sigma} | {a['seconds']:.0f} |"
            )
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(report["utility"])
    figure, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for axis, name in zip(axes[0], settings, strict=True):
        runs = report["utility"][name]["runs"]
        finite = sorted({r["epsilon"] for r in runs if r["epsilon"] is not None})
        infinity_x = (max(finite) * 2) if finite else 1.0
        for series, pick in (
            ("real + DP pseudo", lambda r: r["real_plus_dp_pseudo"]["acc"]["overall"]),
            ("DP pseudo only", lambda r: r["controls"]["dp_pseudo_only"]["acc"]["overall"]),
        ):
            xs, means, stds = [], [], []
            for epsilon in [*finite, None]:
                values = [pick(r) for r in runs if r["epsilon"] == epsilon]
                if values:
                    xs.append(infinity_x if epsilon is None else epsilon)
                    means.append(statistics.fmean(values))
                    stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=series)
        for control, style in (("fc_retrain", ":"), ("ldmlr", "--")):
            values = [r["controls"][control]["acc"]["overall"] for r in first_run_per_seed(runs) if control in r["controls"]]
            if values:
                axis.axhline(statistics.fmean(values), linestyle=style, color="grey", label=f"{control} (non-private)")
        axis.set_xscale("log")
        ticks = [*finite, infinity_x]
        axis.set_xticks(ticks, [*(f"{e:g}" for e in finite), "∞"])
        axis.set_xlabel("ε (δ = 1e-5, tight accounting)")
        axis.set_ylabel("top-1 % (balanced test)")
        axis.set_title(name)
        axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"], choices=["cifar10", "cifar100"])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[math.inf, 10.0, 5.0, 1.0], help="target ε; inf: no noise")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--single-seed-epsilons", type=float, nargs="*", default=[5.0], help="ε run on the first seed only")
    parser.add_argument("--public", action=argparse.BooleanOptionalAction, default=True, help="the public-encoder setting")
    parser.add_argument("--public-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--public-epsilons", type=float, nargs="+", default=[10.0, 1.0])
    parser.add_argument("--ldmlr-seeds", type=int, default=1, help="how many seeds also fit the non-private ldmlr control")
    parser.add_argument("--public-ldmlr", action=argparse.BooleanOptionalAction, default=False, help="non-private ldmlr on public features")
    parser.add_argument("--phase-two-epochs", type=float, default=15.0)
    parser.add_argument(
        "--release-per-class",
        type=lambda text: dict((k, int(v)) for k, v in (item.split("=") for item in text.split(","))),
        default={"cifar10": 500, "cifar100": 100},
        help="pseudo-features released per class, e.g. cifar10=500,cifar100=100 (about N per release)",
    )
    parser.add_argument("--mia-datasets", nargs="*", default=["cifar10"], choices=["cifar10", "cifar100"])
    parser.add_argument("--mia-epsilons", type=float, nargs="+", default=[math.inf, 1.0])
    parser.add_argument("--shadows", type=int, default=2, help="shadow denoisers of offline LiRA (an even number)")
    parser.add_argument("--audit-datasets", nargs="*", default=["cifar10", "cifar100"], choices=["cifar10", "cifar100"])
    parser.add_argument("--canaries", type=int, default=500)
    parser.add_argument("--audit-records", type=int, default=500)
    parser.add_argument(
        "--audit-phase-two-epochs", type=float, default=50.0, help="Phase II epochs of the audited mechanism (the shipped config's)"
    )
    parser.add_argument("--audit-seed", type=int, default=100, help="seed of the audit runs (canaries, inclusion, subset, training)")
    parser.add_argument(
        "--audit-epsilons",
        type=lambda text: {k: [float(e) for e in v.split(":")] for k, v in (item.split("=") for item in text.split(","))},
        default={"cifar10": [10.0, 5.0, 1.0], "cifar100": [10.0, 1.0]},
        help="claimed ε audited per dataset, e.g. cifar10=10:5:1,cifar100=10:1 (the smallest is the negative control's claim)",
    )
    parser.add_argument("--phase-one-audit-datasets", nargs="*", default=["cifar10"], choices=["cifar10", "cifar100"])
    parser.add_argument("--workdir", type=Path, default=None, help="run folders (default: a fresh temporary folder)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=RESULTS / "privacy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_torch_caches_in_featdiff_cache()
    args.norm_bound = load_config(BASE_CONFIG).privacy.norm_bound
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="featdiff-privacy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"run folders: {workdir}", flush=True)
    report: dict = {
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, one job at a time)",
        "base_config": str(BASE_CONFIG.relative_to(ROOT)),
        "phase_two_epochs": args.phase_two_epochs,
        "shadows": args.shadows,
        "canaries": args.canaries,
        "audit_records": args.audit_records,
        "utility": {},
        "membership": {},
        "audits": {},
        "command": "python " + " ".join(sys.argv),
    }
    seconds = {}
    for part, function in (
        ("utility", lambda: utility_part(args, workdir, report)),
        ("membership", lambda: mia_part(args, report)),
        ("audits", lambda: audit_part(args, report)),
    ):
        part_started = time.perf_counter()
        function()
        seconds[part] = time.perf_counter() - part_started
    # Reused runs (an interrupted benchmark continued) count with the time they took when they ran.
    seconds["utility"] = sum(run["wall_s"] for entry in report["utility"].values() for run in entry["runs"])
    report["seconds"] = seconds | {"total": sum(seconds.values())}
    lines = [
        "# Differentially private feature diffusion (dp-promise) on CIFAR-LT, IF = 100",
        "",
        f"Device: {report['device']}. Base config `{report['base_config']}` (δ = 1e-5, R = {args.norm_bound:g}, S = 900, "
        f"linear schedule, K = 4, C = 1, Phase I 20 epochs at batch 256, Phase II {args.phase_two_epochs:g} epochs at "
        f"batch 1024; pseudo-features released per class: {args.release_per_class}). Seeds {args.seeds} "
        f"(ε in {args.single_seed_epsilons}: first seed only; public encoder: seeds {args.public_seeds}, ε "
        f"{args.public_epsilons}; non-private ldmlr: first {args.ldmlr_seeds} seed(s)"
        f"{'' if args.public_ldmlr else ', not on public features'}). "
        f"Membership: {args.shadows} shadow denoisers. Noise seeded from the seeds (`privacy.reproducible_noise: true`) so the "
        "tables can be reproduced: these ε claims do not hold against anyone who knows the seeds. "
        f"Total {report['seconds']['total'] / 60:.1f} min "
        f"(utility {seconds['utility'] / 60:.1f}, membership {seconds['membership'] / 60:.1f}, audits "
        f"{seconds['audits'] / 60:.1f}).",
        "",
        *utility_lines(report, args.epsilons),
        "",
        *privacy_lines(report, args.epsilons),
        "",
        *membership_lines(report),
        "",
        *audit_lines(report, args),
        "",
        f"Command: `{report['command']}`",
    ]
    write_report(args.out, report, "\n".join(lines) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(exit_status(main, "privacy.py"))
