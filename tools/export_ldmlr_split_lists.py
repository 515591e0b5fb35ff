"""Write src/featdiff/data/splits/*.txt.gz from LDMLR's packed train splits.

Run once by a maintainer (the lists are shipped with the package); re-running on the same data
rewrites byte-identical files.

    python tools/export_ldmlr_split_lists.py [--data-root DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from featdiff.data.ldmlr_split import LDMLR_DATASETS, LDMLR_IMBALANCE_FACTORS, split_list_file, write_split_list
from featdiff.data.packed import load_packed
from featdiff.paths import DEFAULT_DATA_ROOT

SPLITS_DIR = Path(__file__).resolve().parents[1] / "src" / "featdiff" / "data" / "splits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder with the packed .npz files")
    args = parser.parse_args()
    SPLITS_DIR.mkdir(parents=True, exist_ok=True)
    for dataset in LDMLR_DATASETS:
        for imbalance_factor in LDMLR_IMBALANCE_FACTORS:
            split = load_packed(args.data_root / f"{dataset}_lt_if{imbalance_factor}_train.npz")
            target = SPLITS_DIR / split_list_file(dataset, imbalance_factor)
            write_split_list(target, split)
            print(f"{target}: {len(split)} images")


if __name__ == "__main__":
    main()
