"""The `featdiff` command: a thin layer that parses arguments and calls the library.

Bad input (a UserError) prints one line and exits with status 2; anything else is a bug and keeps
its traceback. The config and the arguments are checked before torch, scikit-learn or any featdiff
module that imports them is loaded (this module imports only featdiff.config, which imports no
torch), so a typo fails in a fraction of a second instead of after seconds of imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import featdiff
from featdiff.config import check_federated, load_config, parse_overrides
from featdiff.errors import UserError
from featdiff.paths import keep_torch_caches_in_featdiff_cache

SAVED_CONFIG = "config.yaml"  # featdiff.runs.CONFIG_FILE, named here so checking it needs no torch
RESULTS = "results.json"  # featdiff.runs.RESULTS_FILE, likewise
FEDERATED_ROWS = {
    "pseudo_only": "head on pseudo-features",
    "refined": "refined by FedAvg",
    "gaussian_stats": "control: head on the statistics' class Gaussian",
    "gaussian_stats_refined": "control: that head refined by FedAvg",
    "head": "FedAvg head",
    "creff": "CReFF head",
}
"""A federated run's classifiers in its results, and their rows in the closing table."""


class Interrupted(Exception):
    """Ctrl-C during a run whose folder exists: `main` says how to continue it."""

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        self.folder = folder


def _run(args: argparse.Namespace) -> None:
    # Everything that can be checked without torch is checked before the heavy imports below.
    if args.resume is not None:
        if args.config is not None or args.set or args.out is not None:
            raise UserError("--resume DIR takes no CONFIG, --set or --out: the run's saved config.yaml is used")
        saved = Path(args.resume) / SAVED_CONFIG
        if saved.is_file():
            load_config(saved)  # a saved config the current rules reject fails here, fast; Run.resume checks the rest
    else:
        if args.config is None:
            raise UserError("featdiff run needs a CONFIG file (see configs/) or --resume DIR")
        config = load_config(Path(args.config), parse_overrides(args.set))
        out = Path(args.out) if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if out.exists() and os.environ.get("RANK", "0") == "0":  # Run.create refuses it too; saying so here spares the imports
            raise UserError(f"output folder {out} already exists: choose another --out, or continue it with --resume {out}")

    import torch

    from featdiff import distributed
    from featdiff.pipeline import execute, preflight, resolve_device
    from featdiff.report import results_table
    from featdiff.runs import Run

    here = distributed.start(resolve_device(load_config(Path(args.resume) / SAVED_CONFIG).device if args.resume else config.device))
    if args.resume is not None:
        run = Run.resume(Path(args.resume))
    else:
        # Under torchrun rank 0 checks and creates the folder; every rank then opens that one.
        folder = distributed.from_main(lambda: (preflight(config), Run.create(out, config).directory)[1])
        run = Run.open(folder)
    if run.config.compute.threads is not None:
        torch.set_num_threads(run.config.compute.threads)
    say = print if here.main else (lambda *_: None)
    say(f"featdiff: run folder {run.directory}" + (f" ({here.size} ranks)" if here.parallel else ""))
    try:
        results = execute(run)
    except UserError:
        if args.resume is None and here.main:
            run.discard_if_unstarted()
        raise
    except KeyboardInterrupt:
        raise Interrupted(run.directory) from None
    finally:
        distributed.finish()
    if not here.main:
        return
    rows = {**results["controls"], results["method"]: results}
    parts = results["test_parts"]
    print(
        f"\n{results['dataset']}, imbalance factor {results['imbalance_factor']:g}, seed {results['seed']}, final epoch, "
        f"top-1 % on the report part of the test set ({parts['report']} images; adj. = logit-adjusted by the training prior; "
        f"tuned = logits − τ·log(real prior), τ chosen on the {parts['validation']}-image validation part)\n"
    )
    print(results_table(rows, part="report"))
    if "privacy" in results:  # a private method's ledger: what its guarantee covers
        from featdiff.methods.ldmlr_dp.method import guarantee_summary

        print(f"\n{guarantee_summary(results['privacy'])}")
    print(f"\nresults: {run.directory / 'results.json'}  ({results['wall_s']:.1f} s)")


def _privacy(args: argparse.Namespace) -> None:
    """What a private run will spend, printed before any training."""
    config = load_config(Path(args.config), parse_overrides(args.set))
    if config.method != "ldmlr_dp":
        raise UserError(
            f"featdiff privacy prints the budget of method ldmlr_dp, and {args.config} has method {config.method}: "
            "set method: ldmlr_dp (or --set method=ldmlr_dp) to plan a private run "
            "(a private federated run reports each client's ε in its results instead)"
        )
    from featdiff.methods.ldmlr_dp.method import plan_for_config
    from featdiff.privacy.noise import noise_source

    plan = plan_for_config(config)
    privacy = config.privacy
    print(f"{config.data.dataset}, N = {plan.dataset_size} records, δ = {plan.delta:g}, {privacy.adjacency.replace('_', ' ')} adjacency")
    print(f"records clipped to R = {privacy.norm_bound:g}, scaled by √D/R = {plan.feature_scale:.3g}; Δ = {plan.sensitivity:.3g}")
    print(f"split S = {privacy.split_timestep} (ᾱ_S = {plan.alpha_bar:.3g}); K = {privacy.draws} draws, clip C = {privacy.clip_norm:g}\n")
    print("| phase | noise multiplier | sampling rate | steps | ε (dp-promise CLT) | ε (tight) |")
    print("|---|---|---|---|---|---|")
    table = plan.table()
    for name, phase in (("I (t >= S)", plan.phase_one), ("II (t < S)", plan.phase_two), ("total", None)):
        key = {"I (t >= S)": "phase_one", "II (t < S)": "phase_two", "total": "total"}[name]
        cells = ["–", "–", "–"] if phase is None else [f"{phase.noise_multiplier:.4g}", f"{phase.sample_rate:.4g}", str(phase.steps)]
        eps = [("∞" if value is None else f"{value:.3f}") for value in (table[key]["clt"], table[key]["prv"])]
        print(f"| {name} | " + " | ".join(cells + eps) + " |")
    if plan.phase_two is not None and plan.phase_two.relation == "replace_one":
        print(
            "\nPhase II's clipped sum is accounted with the replace-one pair (a record swapped: a mixture on each side, "
            "dp-accounting's PLD); the CLT column, dp-promise's formula, reads it as an added record and under-reports"
        )
    per_record = plan.epsilon_with_phase_one_per_record()
    if per_record is not None and privacy.phase_one_accounting == "per_record":
        print(f"\nPhase I is bounded record by record (privacy.phase_one_accounting: per_record): the claim is total ε = {per_record:.3f}")
    elif per_record is not None:
        bound = "no finite ε under add/remove adjacency" if per_record == float("inf") else f"total ε = {per_record:.3f}"
        print(
            "\nPhase I is accounted by dp-promise's argument (a batch of noisy inputs costs what a subsampled Gaussian sum costs). "
            f"Bounded record by record instead (every noisy input traced to its record): {bound}"
        )
    target = "∞ (not private)" if privacy.epsilon is None else f"{privacy.epsilon:g}"
    claim = "∞" if not plan.private else f"{plan.epsilon:.3f}"
    how = privacy.accountant + (", Phase I per record" if privacy.phase_one_accounting == "per_record" else "")
    print(f"\ntarget ε {target}; claimed ({how}) {claim}")
    print(f"noise: {noise_source(privacy, config.seed)}")


def _check_new_file(out: Path) -> None:
    """Refuse, before any work, an OUT that exists or that no file can be written at (a parent
    that is a regular file, or a folder that is not writable)."""
    if out.exists():
        raise UserError(f"{out} already exists: choose another OUT (a features file is never overwritten)")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {out}: {ancestor} is a file, not a folder; choose an OUT in a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: folder {ancestor} is not writable; choose an OUT in a folder you can write")


def _encode(args: argparse.Namespace) -> None:
    config = load_config(Path(args.config), parse_overrides(args.set))
    out = Path(args.out)
    _check_new_file(out)
    import torch

    from featdiff.pipeline import export_features

    if config.compute.threads is not None:
        torch.set_num_threads(config.compute.threads)

    sizes = export_features(config, out)
    print(f"{out}: {sizes['train']} training and {sizes['test']} test features of dimension {sizes['dim']}")


def _federated(args: argparse.Namespace) -> None:
    """Federated LDMLR: prepare (or reopen) the run folder, check, then start the engine."""
    if args.resume is not None:
        if args.config is not None or args.set or args.out is not None:
            raise UserError("--resume DIR takes no CONFIG, --set or --out: the run's saved config.yaml is used")
        folder = Path(args.resume)
        if not (folder / SAVED_CONFIG).is_file():
            raise UserError(f"{folder} is not a featdiff run folder: no {SAVED_CONFIG} there; pass the folder a run wrote")
        if (folder / RESULTS).is_file():
            raise UserError(f"run {folder} is already complete ({RESULTS} exists); start a new one with --out")
        config = load_config(folder / SAVED_CONFIG)
    else:
        if args.config is None:
            raise UserError("featdiff federated needs a CONFIG file (see configs/federated_cifar10_lt.yaml) or --resume DIR")
        config = load_config(Path(args.config), parse_overrides(args.set))
        folder = Path(args.out) if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if folder.exists():
            raise UserError(f"output folder {folder} already exists: choose another --out, or continue it with --resume {folder}")
    check_federated(config)  # the federated section's rules, and the privacy section's for private clients
    if args.superlink is None and args.root_certificates is not None:
        raise UserError("--root-certificates needs --superlink HOST:PORT")
    from featdiff.federated.launch import check_superlink, preflight, run_deployed, run_here, settings_for
    from featdiff.report import results_table
    from featdiff.runs import Run

    preflight(config)
    if args.superlink is not None:
        check_superlink(args.superlink, root_certificates=args.root_certificates)
    if args.resume is None:
        Run.create(folder, config)
    settings = settings_for(folder, resume=args.resume is not None)
    print(f"featdiff: run folder {folder}")
    if args.superlink is not None:
        run_deployed(settings, args.superlink, args.root_certificates)
    else:
        run_here(settings, config.federated.clients, args.engine)
    if not (folder / RESULTS).is_file():  # the ServerApp ran elsewhere (the simulation's) and stopped
        raise UserError(_federated_failure(folder))
    results = json.loads((folder / RESULTS).read_text())
    rows = {f"{results['algorithm']}: {name}": results[key] for key, name in FEDERATED_ROWS.items() if key in results}
    privacy = "private clients" if results["private"] else "non-private"
    print(
        f"\n{config.federated.clients} clients, {results['algorithm']} ({privacy}), seed {config.seed}, top-1 % on the report part of the "
        "test set (tuned: τ chosen on its validation part)\n"
    )
    print(results_table(rows, part="report"))
    if "chosen" in results:
        print(f"\nchosen on the validation part: {FEDERATED_ROWS[results['chosen']]}")
    print(f"\nresults: {folder / RESULTS}  ({results['wall_s']:.1f} s over all sessions)")


def _federated_failure(folder: Path) -> str:
    """Why a federated run stopped without results: its last `failed` record, which names the stage
    and the clients' errors, or (none) where to look."""
    lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    failures = [record for record in map(json.loads, lines) if record["stage"] == "failed"]
    if failures:
        return failures[-1]["message"]
    return f"the ServerApp stopped before finishing (its log is above): fix the cause, then continue with --resume {folder}"


def _download(args: argparse.Namespace) -> None:
    from featdiff.data.download import download_cifar

    folder = download_cifar(args.dataset, Path(args.dest))
    print(f"{args.dataset}: {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featdiff",
        description="Long-tailed recognition with diffusion models in feature space: LDMLR, end-to-end, private and federated runs, "
        "each beside its cheapest control.",
        epilog="Quick start: featdiff run configs/digits_ldmlr.yaml (no download). Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"featdiff {featdiff.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one config (a method on a dataset with a seed)")
    run.add_argument("config", nargs="?", help="YAML config, e.g. configs/digits_ldmlr.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--out", help="new run folder (default runs/NAME-TIMESTAMP); never overwritten")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    run.set_defaults(handler=_run)

    privacy = commands.add_parser("privacy", help="print what a private config spends (ε per phase, calibrated σ) without training")
    privacy.add_argument("config", help="YAML config with a privacy section")
    privacy.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    privacy.set_defaults(handler=_privacy)

    encode = commands.add_parser("encode", help="write a config's training and test features (shipped encoder) to one file")
    encode.add_argument("config", help="YAML config with data and encoder.checkpoint")
    encode.add_argument("out", help="new .safetensors file (never overwritten)")
    encode.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    encode.set_defaults(handler=_encode)

    federated = commands.add_parser("federated", help="federated LDMLR (FedDDPM / FedDDPM+ / progressive bank, baselines) on Flower")
    federated.add_argument("config", nargs="?", help="YAML config with a federated section, e.g. configs/federated_cifar10_lt.yaml")
    federated.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    federated.add_argument("--out", help="new run folder (default runs/NAME-TIMESTAMP); never overwritten")
    federated.add_argument("--resume", metavar="DIR", help="continue a killed run from its last finished round")
    federated.add_argument(
        "--engine",
        choices=["inprocess", "simulation"],
        default="inprocess",
        help="inprocess: every client called in this process (fast on few cores); simulation: Flower's Ray engine",
    )
    federated.add_argument("--superlink", metavar="HOST:PORT", help="run on a SuperLink and its SuperNodes instead (see README)")
    federated.add_argument("--root-certificates", metavar="CA.crt", help="TLS: the CA that signed the SuperLink's certificate")
    federated.set_defaults(handler=_federated)

    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    download = data_commands.add_parser("download", help="fetch official CIFAR python files (md5-checked)")
    download.add_argument("dataset", choices=["cifar10", "cifar100"])
    download.add_argument("--dest", default="data", help="folder to extract into (default: data)")
    download.set_defaults(handler=_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_torch_caches_in_featdiff_cache()
    try:
        args.handler(args)
    except UserError as error:
        print(f"featdiff: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as interrupted:
        print(f"featdiff: interrupted; continue with --resume {shlex.quote(str(interrupted.folder))}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("featdiff: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
