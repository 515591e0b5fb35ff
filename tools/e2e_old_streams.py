"""Run benchmarks/e2e.py's e2e_A on CIFAR-10 (one seed) on the current code with chosen random
streams seeded as before issue 16 named them (seed·1000 + the old stage number), to tell a change
of computation from a change of randomness (benchmarks/results/refactor_check/issue16/).

    python tools/e2e_old_streams.py SEED GROUP [GROUP ...] --workdir W --out OUT

Groups: init (the denoiser's initialisation), pretrain (its pre-training's data order and draws,
one generator as the old code had it), data (joint training's data, augmentation and sampling
seeds), diagnostics, features, generation, or all. With all, the run is the old code's run.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch

import featdiff.methods.e2e.method as method
import featdiff.seeding as seeding

OLD_STAGES = {
    "e2e/denoiser-init": ("init", 4),
    "e2e/pretrain-data": ("pretrain", 4),
    "e2e/pretrain-diffusion": ("pretrain", 4),
    "e2e/data": ("data", 8),
    "e2e/diagnostics": ("diagnostics", 9),
    "e2e/features-as-trained": ("features", 2),
    "e2e/generation": ("generation", 5),
}
GROUPS = sorted({group for group, _ in OLD_STAGES.values()})


def mapped_streams(groups: set[str]):
    original, shared = seeding.named_generator, {}

    def named_generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        if name not in OLD_STAGES or OLD_STAGES[name][0] not in groups:
            return original(seed, name, device)
        group, stage = OLD_STAGES[name]
        if group == "pretrain":  # the old pre-training drew its data order and its draws from one generator
            key = (seed, str(device))
            if key not in shared or name == "e2e/pretrain-data":
                shared[key] = torch.Generator(device=device).manual_seed(seed * 1000 + stage)
            return shared[key]
        return torch.Generator(device=device).manual_seed(seed * 1000 + stage)

    return named_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int)
    parser.add_argument("groups", nargs="+", choices=[*GROUPS, "all"])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    groups = set(GROUPS) if "all" in args.groups else set(args.groups)
    method.named_generator = mapped_streams(groups)
    benchmark = Path(__file__).resolve().parents[1] / "benchmarks" / "e2e.py"
    sys.argv = [str(benchmark), "--phase", "main", "--seeds", str(args.seed), "--methods", "e2e_A", "--datasets", "cifar10"]
    sys.argv += ["--threads", str(args.threads), "--workdir", str(args.workdir), "--out", str(args.out)]
    runpy.run_path(str(benchmark), run_name="__main__")


if __name__ == "__main__":
    main()
