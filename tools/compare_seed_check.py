"""Set one seed of a re-run benchmark beside its committed table: each overall accuracy (plain
and logit-adjusted) against the committed mean ± std over seeds, flagged where it falls outside
one std. Used for refactor checks (benchmarks/results/refactor_check/).

    python tools/compare_seed_check.py NEW.json COMMITTED.json

Reads the `splits → methods → acc / acc_adjusted → overall` layout of ldmlr_frozen.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(new: dict, committed: dict) -> list[str]:
    lines = ["| split | method | accuracy | this seed | committed mean ± std | within one std |", "|---|---|---|---|---|---|"]
    for split, entry in new["splits"].items():
        for method, result in entry["methods"].items():
            for kind in ("acc", "acc_adjusted"):
                value = result[kind]["overall"]["values"][0]
                old = committed["splits"][split]["methods"][method][kind]["overall"]
                mean, std = old["mean"], old["std"]
                within = abs(value - mean) <= std + 1e-9
                verdict = "yes" if within else f"no ({(value - mean) / std:+.1f} std)" if std else "no"
                accuracy = "adjusted" if kind == "acc_adjusted" else "plain"
                lines.append(f"| {split} | {method} | {accuracy} | {value:.2f} | {mean:.2f} ± {std:.2f} | {verdict} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path)
    parser.add_argument("committed", type=Path)
    args = parser.parse_args()
    print("\n".join(rows(json.loads(args.new.read_text()), json.loads(args.committed.read_text()))))


if __name__ == "__main__":
    main()
