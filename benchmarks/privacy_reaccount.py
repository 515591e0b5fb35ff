"""Re-account the committed private runs of `benchmarks/privacy.py` with the pair of their adjacency.

Until 2026-12-07 featdiff accounted ldmlr_dp's Phase II (DP-SGD on a clipped sum) with the
add/remove pair of Opacus's PRV accountant whatever `privacy.adjacency` said. The runs of
benchmarks/privacy.py used the default, replace-one, under which a record is swapped rather than
added: each side of the pair is then a mixture, and the same σ spends about twice the ε. Their
ledgers record every mechanism (σ, q, steps), so their true ε needs no rerun: this script reads
benchmarks/results/privacy.json and writes privacy_reaccounted.{json,md} beside it, the ε each
run claimed and the ε its mechanisms spend under its adjacency (`featdiff.privacy.accounting`).

It also gives, per run, the ε without dp-promise's argument for Phase I (that a batch of noisy
inputs costs what a subsampled Gaussian sum costs): Phase I bounded record by record
(`accounting.per_record_epsilon`, each visit at its uniformly drawn timestep's noise), alone and
composed with Phase II.

    python benchmarks/privacy_reaccount.py
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from featdiff.config import load_config
from featdiff.generation.pseudo import schedule_for
from featdiff.privacy.accounting import SubsampledGaussian, per_record_epsilon, tight_epsilon
from featdiff.privacy.plan import phase_one_visit_noise, record_sensitivity
from featdiff.report import write_report

ROOT = Path(__file__).resolve().parents[1]
FEATURE_DIM = 64
"""D of the shipped ResNet-32 encoders' features, which every committed run used."""
RESULTS = ROOT / "benchmarks" / "results"


def reaccounted(report: dict) -> list[dict]:
    """One row per distinct private run (the seeds of a setting share their mechanisms)."""
    config = load_config(ROOT / report["base_config"])
    privacy = config.privacy
    sensitivity = record_sensitivity(privacy.adjacency, FEATURE_DIM)
    visits = phase_one_visit_noise(schedule_for(config.diffusion).alphas_cumprod, privacy.split_timestep, sensitivity)
    rows: dict[tuple, dict] = {}
    for setting, entry in report["utility"].items():
        for run in entry["runs"]:
            if run["phase_two"] is None:
                continue
            phase_one = SubsampledGaussian(**run["phase_one"])
            if not math.isclose(visits[0], phase_one.noise_multiplier, rel_tol=1e-9):
                raise SystemExit(f"{setting}: the recorded Phase I σ {phase_one.noise_multiplier} is not the config's σ at S {visits[0]}")
            phase_two = SubsampledGaussian(**run["phase_two"], relation=privacy.adjacency)
            key = (setting, run["epsilon"])
            row = rows.setdefault(
                key,
                {
                    "setting": setting,
                    "target_epsilon": run["epsilon"],
                    "claimed_epsilon": run["epsilon_prv"],
                    "adjacency": privacy.adjacency,
                    "delta": privacy.delta,
                    "phase_two": run["phase_two"],
                    "epsilon": tight_epsilon([phase_one, phase_two], privacy.delta),
                    "phase_two_epsilon": tight_epsilon([phase_two], privacy.delta),
                    "phase_one": run["phase_one"],
                    "phase_one_epsilon": tight_epsilon([phase_one], privacy.delta),
                    "phase_one_per_record_epsilon": per_record_epsilon(phase_one, [], privacy.delta, visits),
                    "per_record_epsilon": per_record_epsilon(phase_one, [phase_two], privacy.delta, visits),
                    "seeds": [],
                },
            )
            row["seeds"].append(run["seed"])
    return list(rows.values())


def markdown(rows: list[dict]) -> str:
    lines = [
        "# The private runs of benchmarks/privacy.py, re-accounted with their adjacency's pair",
        "",
        "`python benchmarks/privacy_reaccount.py` (from the ledgers in privacy.json; no run is repeated). Adjacency",
        f"{rows[0]['adjacency'].replace('_', ' ')}, δ = {rows[0]['delta']:g}. `claimed`: the ε featdiff reported then (Phase II",
        "accounted with the add/remove pair); `spent`: the ε of the same mechanisms with Phase II's replace-one pair.",
        "`Phase I per record` and `spent, Phase I per record`: the same without dp-promise's argument that a Phase I batch",
        "of noisy inputs costs what a subsampled Gaussian sum costs, every noisy input traced to its record instead (each",
        "visit a Gaussian mechanism at its uniformly drawn timestep's noise; `Phase I σ` is the one at S, the largest signal).",
        "",
        "| setting | target ε | claimed ε | spent ε | Phase I | Phase II alone | Phase I per record | spent, Phase I per record | "
        "Phase I σ, q, steps | Phase II σ, q, steps | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        one, two = row["phase_one"], row["phase_two"]
        lines.append(
            f"| {row['setting']} | {row['target_epsilon']:g} | {row['claimed_epsilon']:.2f} | **{row['epsilon']:.2f}** | "
            f"{row['phase_one_epsilon']:.2f} | {row['phase_two_epsilon']:.2f} | {row['phase_one_per_record_epsilon']:.2f} | "
            f"**{row['per_record_epsilon']:.2f}** | {one['noise_multiplier']:.3f}, {one['sample_rate']:.4f}, {one['steps']} | "
            f"{two['noise_multiplier']:.3f}, {two['sample_rate']:.4f}, {two['steps']} | {', '.join(map(str, row['seeds']))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    started = time.perf_counter()
    report = json.loads((RESULTS / "privacy.json").read_text())
    rows = reaccounted(report)
    out = {"command": "python benchmarks/privacy_reaccount.py", "rows": rows, "seconds": time.perf_counter() - started}
    write_report(RESULTS / "privacy_reaccounted", out, markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
