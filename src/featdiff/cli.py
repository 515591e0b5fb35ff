"""The `featdiff` command: a thin layer that parses arguments and calls the library.

Bad input (a UserError) prints one line and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from featdiff.config import load_config, parse_overrides
from featdiff.errors import UserError


def _run(args: argparse.Namespace) -> None:
    from featdiff.pipeline import execute
    from featdiff.report import results_table
    from featdiff.runs import Run

    if args.resume is not None:
        if args.config is not None or args.set or args.out is not None:
            raise UserError("--resume DIR takes no CONFIG, --set or --out: the run's saved config.yaml is used")
        run = Run.resume(Path(args.resume))
    else:
        if args.config is None:
            raise UserError("featdiff run needs a CONFIG file (see configs/) or --resume DIR")
        config = load_config(Path(args.config), parse_overrides(args.set))
        out = Path(args.out) if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = Run.create(out, config)
    print(f"featdiff: run folder {run.directory}")
    try:
        results = execute(run)
    except UserError:
        if args.resume is None:
            run.discard_if_unstarted()
        raise
    rows = {**results["controls"], results["method"]: results}
    print(
        f"\n{results['dataset']}, imbalance factor {results['imbalance_factor']:g}, seed {results['seed']}, "
        f"final epoch, top-1 % on the test set (adj. = logit-adjusted by the training prior)\n"
    )
    print(results_table(rows))
    print(f"\nresults: {run.directory / 'results.json'}  ({results['wall_s']:.1f} s)")


def _download(args: argparse.Namespace) -> None:
    from featdiff.data.download import download_cifar

    folder = download_cifar(args.dataset, Path(args.dest))
    print(f"{args.dataset}: {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featdiff", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one config (a method on a dataset with a seed)")
    run.add_argument("config", nargs="?", help="YAML config, e.g. configs/digits_ldmlr.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--out", help="new run folder (default runs/NAME-TIMESTAMP); never overwritten")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    run.set_defaults(handler=_run)

    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    download = data_commands.add_parser("download", help="fetch official CIFAR python files (md5-checked)")
    download.add_argument("dataset", choices=["cifar10", "cifar100"])
    download.add_argument("--dest", default="data", help="folder to extract into (default: data)")
    download.set_defaults(handler=_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"featdiff: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featdiff: interrupted; continue with --resume RUN_FOLDER", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
