"""Benchmark: the cost of one DP-SGD step of the denoiser against a non-private step on the same rows.

Default denoiser (width 256, depth 3, 64-d features, 10 classes), an expected batch of 1024
examples with K = 4 noise draws each (4096 rows), Phase II timesteps. Per path: the median wall
time of a full step (loss, per-example clipping, noise, Adam step), after warm-up, on the CPU.

    python benchmarks/privacy_step_cost.py [--batch 1024] [--draws 4] [--repeats 5] [--threads N]

Writes benchmarks/results/privacy_step_cost.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from featdiff.config import config_from_dict
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.generation.pseudo import build_denoiser
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.privacy.dp_sgd import apply_private_gradients, chunked_clipped_sum, noised_mean
from featdiff.privacy.ghost import ghost_clipped_sum
from featdiff.report import write_report
from featdiff.seeding import initialise
from featdiff.training.loop import apply_update

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
PATHS = ("non-private", "ghost", "functorch", "opacus")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=RESULTS / "privacy_step_cost")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_torch_caches_in_featdiff_cache()
    config = config_from_dict({"method": "ldmlr_dp"})
    diffusion, privacy = config.diffusion, config.privacy
    objective = DenoisingObjective.of(diffusion)
    generator = torch.Generator().manual_seed(0)
    model = initialise(build_denoiser(64, 10, diffusion), generator)
    for block in model.blocks:  # trained-like weights: the zero-initialised layers would make gradients trivial
        torch.nn.init.normal_(block.fc2.weight, std=0.02, generator=generator)
    torch.nn.init.normal_(model.output.weight, std=0.02, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x0 = torch.randn(args.batch, 64, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    t, noise = objective.draw(args.batch, 64, draws=args.draws, generator=generator, high=privacy.split_timestep)

    def step(path: str) -> None:
        if path == "non-private":
            apply_update(objective.loss(model, x0, y, t, noise).mean(), optimizer)
            return
        if path == "ghost":
            summed, _ = ghost_clipped_sum(model, lambda: objective.loss(model, x0, y, t, noise), privacy.clip_norm)
        else:
            summed, _ = chunked_clipped_sum(path, model, x0, y, t, noise, objective, clip_norm=privacy.clip_norm)
        # Seeded noise: this benchmark measures time, and its noise protects nothing.
        private = noised_mean(summed, clip_norm=privacy.clip_norm, noise_multiplier=1.0, expected_batch=args.batch, generator=generator)
        apply_private_gradients(model, private, optimizer)

    seconds = {}
    for path in PATHS:
        step(path)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            step(path)
            times.append(time.perf_counter() - started)
        seconds[path] = statistics.median(times)
        print(f"{path}: {seconds[path]:.3f} s/step ({seconds[path] / seconds['non-private']:.2f}×)", flush=True)
    device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, one process)"
    report = {
        "device": device,
        "batch": args.batch,
        "draws": args.draws,
        "rows": args.batch * args.draws,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": seconds,
        "ratio_to_non_private": {path: seconds[path] / seconds["non-private"] for path in PATHS},
        "command": "python " + " ".join(sys.argv),
    }
    lines = [
        "# Cost of a DP-SGD step of the denoiser",
        "",
        f"Device: {device}. Default denoiser ({report['parameters']:,} parameters), expected batch {args.batch}, "
        f"K = {args.draws} draws per example ({report['rows']} rows), median of {args.repeats} steps after one warm-up.",
        "",
        "| path | s / step | × non-private |",
        "|---|---|---|",
        *[f"| {path} | {seconds[path]:.3f} | {report['ratio_to_non_private'][path]:.2f} |" for path in PATHS],
        "",
        "non-private: the plain gradient of the mean loss over the same rows. ghost: per-example norms from Gram "
        "matrices of layer inputs and output gradients, then a second backward of the clip-weighted loss (no "
        "per-example gradient). functorch / opacus: per-example gradients materialised 128 examples at a time.",
        "",
        f"Command: `{report['command']}`",
    ]
    write_report(args.out, report, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
