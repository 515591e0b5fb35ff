"""Benchmark: feature generation against the cheapest controls, knobs chosen on validation only (issue 17).

The test set of every split is cut per class into a validation part (20 %) and a report part
(80 %, `featdiff.evaluation.protocol`). Every knob is chosen on the validation part; every table
reports the report part. Two parts, each one command (run `select` first):

    python benchmarks/controls.py --part select --splits cifar10:100     # one split's knob search, seed 0
    python benchmarks/controls.py --part frozen --splits cifar10:100     # chosen methods + controls, 3 seeds
    python benchmarks/controls.py --part dp --datasets cifar10           # private releases and controls at ε ∈ {∞, 10, 1}
    python benchmarks/controls.py --part render                          # the tables again from their JSON, no run
    python benchmarks/controls.py --part frozen --splits cifar100:100 --test-time-flip --selection benchmarks/results \
        --out benchmarks/results/controls_flip                           # every head scored on test-time flips, same knobs
    python benchmarks/controls.py --part select --splits cifar100:10 --test-time-flip \
        --out benchmarks/results/controls_flip_selected                  # the knob search itself on flipped validation features

`select` runs a coordinate search (`featdiff.selection`) per generator family on seed 0: the
class Gaussian (`gaussian`) and the diffusion model (`ldmlr`), over the training features,
the training set (real + balanced fill, or pseudo-only), the tail temperature, head-to-tail
transfer, the Gaussian's shrinkage or the denoiser's guidance and clip range, and the head.
Each option is scored on the validation part by the head alone (`--criterion tuned`, the default)
or by its blend with the shipped head (`--criterion blended`, for a split whose table reads the
blend); the split's entry records which, and a frozen split never averages seeds measured under
different choices.
`frozen` runs, for every seed, the chosen Gaussian, the chosen diffusion model (whose run also
holds the Gaussian with the same knobs) and LDMLR's defaults (balanced fill), each beside the
cheap controls from the same run: `ce` with post-hoc logit adjustment (τ = 1, and τ chosen on
validation), `fc_retrain`, the logit-adjusted-loss head and the head on L2-normalised features.
The featdiff method is the family with the better validation score at selection. Every retrained
head is also read blended with the shipped head ((w, τ) on validation); each split's table ends with
a line that sets featdiff's blend beside LA and beside the best real-only head's blend, since a
blend is an ensemble and only that difference is the pseudo-features' own.

`dp` runs, on the IF=100 splits at ε ∈ {∞, 10, 1} (δ = 1e-5, add/remove-one adjacency, R = 8), the
DP release of `ldmlr_dp` (dp-promise, Phase II 15 epochs as benchmarks/privacy.py) and the private
controls at the same (ε, δ): `dp_linear` (DP-SGD on the linear head, logit-adjusted loss, prior
from a DP count release), `dp_gaussian` (the class Gaussian from DP class moments) and their
combination (`dp_linear` that also trains on a `dp_gaussian` release, half the budget each). Their
knobs are fixed a priori: choosing among DP runs of the same records would leak beyond the
ledger. Add/remove-one, the adjacency the table was measured under (Phase II was then accounted
for it alone); there `ldmlr_dp`'s ε rests on dp-promise's argument for Phase I, which the README's
threat model states, while the controls have no Phase I. The noise is seeded (`privacy.reproducible_noise: true`)
so the table can be reproduced; no claim holds against anyone who knows the seed.

Finished runs are kept under --workdir and reused, so parts can be stopped and continued; every
invocation rewrites benchmarks/results/controls_selection.{json,md} or controls_frozen.{json,md}
from all finished runs of the splits it was given and those already in the results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from featdiff.config import config_from_dict
from featdiff.errors import UserError, exit_status
from featdiff.io import atomic_write_text, strict_json
from featdiff.methods.ldmlr import denoiser_inputs
from featdiff.paths import keep_torch_caches_in_featdiff_cache
from featdiff.pipeline import execute
from featdiff.report import write_report
from featdiff.runs import Run
from featdiff.selection import Criterion, Knob, coordinate_search, key_of, merged

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar-lt"
RESULTS = ROOT / "benchmarks" / "results"
SPLITS = ["cifar10:100", "cifar10:10", "cifar100:100", "cifar100:10"]
GROUPS = ("overall", "many", "medium", "few")

COMMON_KNOBS = [
    Knob("features", ({}, {"features": {"style": "eval"}}, {"features": {"style": "eval", "augmented_views": 2}})),
    Knob("training set", ({}, {"generation": {"count_rule": "uniform", "include_real": False}})),
    Knob("tail temperature", ({}, {"generation": {"temperature_power": 0.15}}, {"generation": {"temperature_power": 0.3}})),
    Knob(
        "transfer",
        (
            {},
            {"generation": {"transfer": "calibration", "transfer_strength": 0.3}},
            {"generation": {"transfer": "calibration", "transfer_strength": 0.6}},
            {"generation": {"transfer": "residual", "transfer_strength": 0.6}},
        ),
    ),
]
CRITERIA: dict[Criterion, str] = {
    "tuned": "the head alone, τ chosen on the validation part",
    "blended": "the head blended with the shipped head, (w, τ) chosen on the validation part: for splits whose table reads the blend",
}
"""What a knob search scores each option by (`featdiff.selection.validation_score`)."""
HEAD_KNOB = Knob("head", ({}, {"classifier": {"normalize": True}}))
FAMILIES = {
    "gaussian": [
        *COMMON_KNOBS,
        Knob("shrinkage", ({}, {"generation": {"shrinkage": 0.0}}, {"generation": {"shrinkage": 0.5}})),
        HEAD_KNOB,
    ],
    "ldmlr": [
        *COMMON_KNOBS,
        Knob(
            "guidance",
            ({}, {"diffusion": {"label_dropout": 0.1}}, {"diffusion": {"label_dropout": 0.1, "guidance": 0.7}}),
        ),
        Knob("clip range", ({}, {"diffusion": {"clip_widen": 1.5}})),
        HEAD_KNOB,
    ],
}
"""Per generator family, the knobs of the search in the order they are chosen; every knob's
first option is featdiff's default."""


def base_config(split: str, seed: int, method: str, threads: int, *, test_time_flip: bool = False) -> dict:
    """The frozen-encoder benchmark's settings (those of benchmarks/ldmlr_frozen.py); with
    `test_time_flip`, every head is scored on the mean of each test image's and its mirror's features."""
    dataset, imbalance = split.split(":")
    flip = {"evaluation": {"test_time_flip": True}} if test_time_flip else {}  # absent when off: older runs' folders keep their hash
    return flip | {
        "name": "run",
        "method": method,
        "seed": seed,
        "data": {"dataset": dataset, "imbalance_factor": float(imbalance), "root": str(DATA)},
        "encoder": {"checkpoint": str(DATA / f"ldmlr_resnet32_{dataset}_lt_if{imbalance}.safetensors")},
        "features": {"style": "ldmlr"},
        "generation": {"count_rule": "balanced"},
        "compute": {"threads": threads},
    }


class Runs:
    """Run folders under `workdir/<split>/seed<s>/<label>-<hash of the config>`, reused when
    finished; an ldmlr run samples the denoiser of a finished run that fitted the same one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.denoisers: dict[str, str] = {}
        for results in workdir.glob("*/seed*/*/results.json"):
            config = json.loads(results.read_text())["config"]
            if config["method"] == "ldmlr" and not config["diffusion"]["denoiser_from"]:
                self.denoisers[self._denoiser_key(config)] = str(results.parent)

    @staticmethod
    def _denoiser_key(values: dict) -> str:
        return key_of(denoiser_inputs(config_from_dict({**values, "diffusion": {**values.get("diffusion", {}), "denoiser_from": ""}})))

    def run(self, split: str, label: str, values: dict) -> dict:
        values = merged(values)
        if values["method"] == "ldmlr":
            source = self.denoisers.get(self._denoiser_key(values))
            if source is not None:
                values = merged(values, {"diffusion": {"denoiser_from": source}})
        digest = hashlib.sha1(key_of({k: v for k, v in values.items() if k != "compute"}).encode()).hexdigest()[:10]
        folder = self.workdir / split.replace(":", "-if") / f"seed{values['seed']}" / f"{label}-{digest}"
        if (folder / "results.json").is_file():
            return json.loads((folder / "results.json").read_text())
        config = config_from_dict(values)
        started = time.perf_counter()
        run = Run.resume(folder) if folder.is_dir() else Run.create(folder, config)
        results = execute(run)
        print(f"    {folder.name}: {time.perf_counter() - started:.0f} s", flush=True)
        if values["method"] == "ldmlr" and not values.get("diffusion", {}).get("denoiser_from"):
            self.denoisers[self._denoiser_key(values)] = str(folder)
        return results


def select(split: str, runs: Runs, threads: int, criterion: Criterion, *, test_time_flip: bool = False) -> dict:
    """Both families' coordinate searches on seed 0, without the trained controls, each option scored
    by `criterion` on the validation part (the head alone, or blended with the shipped head); with
    `test_time_flip`, on that part's flipped features, as a table scored on flips reads its report part."""
    chosen = {}
    flipped = " on test-time flips" if test_time_flip else ""
    for family, knobs in FAMILIES.items():
        print(f"{split} {family}: knob search on the validation part{flipped} (seed 0, criterion {criterion})", flush=True)
        base = merged(base_config(split, 0, family, threads, test_time_flip=test_time_flip), {"evaluation": {"controls": False}})
        started = time.perf_counter()
        evaluate = lambda values, family=family: runs.run(split, f"select-{family}", values)  # noqa: E731
        result = coordinate_search(base, knobs, evaluate, criterion=criterion)
        chosen[family] = {
            "overrides": result.chosen,
            "validation_score": result.score,
            "tau": result.results[criterion]["tau"],
            **({"weight": result.results["blended"]["weight"]} if criterion == "blended" else {}),
            "trail": result.trail,
            "knobs": [{"name": knob.name, "options": list(knob.options)} for knob in knobs],
            "search_s": time.perf_counter() - started,
        }
    best = max(chosen, key=lambda family: chosen[family]["validation_score"])
    return {"families": chosen, "featdiff": best, "criterion": criterion} | ({"test_time_flip": True} if test_time_flip else {})


def knob_choice(selection: dict) -> dict:
    """What a frozen split's chosen rows depend on: the criterion (and whether it read flipped
    features), each family's overrides and the featdiff family. Seeds measured under different
    choices are different rows, never one mean."""
    return {
        "criterion": selection.get("criterion", "tuned"),
        **({"selected_on_flips": True} if selection.get("test_time_flip") else {}),
        "featdiff": selection["featdiff"],
        "overrides": {family: chosen["overrides"] for family, chosen in selection["families"].items()},
    }


def summary_of(results: dict) -> dict:
    """The numbers a table row needs from one classifier's summary: report-part accuracies plain,
    adjusted and tuned (τ chosen on validation), the validation score and τ."""
    report, tuned = results["report"], results["tuned"]
    summary = {
        "plain": report["acc"],
        "adjusted": report["acc_adjusted"],
        "tuned": tuned["report"]["acc"],
        "tau": tuned["tau"],
        "validation": tuned["validation"]["acc"]["overall"],
    }
    if "blended" in results:  # every head but the shipped one, in runs since the blend exists
        blended = results["blended"]
        summary["blended"] = {
            "report": blended["report"]["acc"],
            "weight": blended["weight"],
            "tau": blended["tau"],
            "validation": blended["validation"]["acc"]["overall"],
        }
    return summary


def frozen(split: str, selection: dict, runs: Runs, seeds: list[int], threads: int, *, test_time_flip: bool = False) -> dict:
    """Per seed: LDMLR's defaults and both chosen families, with their same-run controls."""
    rows: dict[str, list[dict]] = {}
    chosen = selection["families"]

    def config(seed: int, method: str) -> dict:
        return base_config(split, seed, method, threads, test_time_flip=test_time_flip)

    for seed in seeds:
        print(f"{split} seed {seed}", flush=True)
        default = runs.run(split, "ldmlr-default", config(seed, "ldmlr"))
        gaussian = runs.run(split, "gaussian-chosen", merged(config(seed, "gaussian"), chosen["gaussian"]["overrides"]))
        diffusion = runs.run(split, "ldmlr-chosen", merged(config(seed, "ldmlr"), chosen["ldmlr"]["overrides"]))
        controls = default["controls"]
        entries = {
            "ce (shipped encoder)": controls["ce"],
            "fc_retrain": controls["fc_retrain"],
            "fc_retrain_la (logit-adjusted loss)": controls["fc_retrain_la"],
            "fc_retrain_normalized": controls["fc_retrain_normalized"],
            "gaussian (defaults: balanced fill)": controls["gaussian"],
            "ldmlr (defaults: balanced fill)": default,
            "gaussian (chosen on validation)": gaussian,
            "ldmlr (chosen on validation)": diffusion,
            "gaussian (the chosen ldmlr's knobs, same run)": diffusion["controls"]["gaussian"],
            "fc_retrain_la (the chosen ldmlr's features, same run)": diffusion["controls"]["fc_retrain_la"],
        }
        best = gaussian if selection["featdiff"] == "gaussian" else diffusion
        entries[f"featdiff: {selection['featdiff']} (chosen on validation)"] = best
        for name, results in entries.items():
            rows.setdefault(name, []).append(summary_of(results))
        print(
            f"  tuned report accuracy: ce {summary_of(controls['ce'])['tuned']['overall']:.2f}, "
            f"gaussian {summary_of(gaussian)['tuned']['overall']:.2f}, ldmlr {summary_of(diffusion)['tuned']['overall']:.2f}",
            flush=True,
        )
    knobs = knob_choice(selection) | ({"test_time_flip": True} if test_time_flip else {})
    return {"seeds": seeds, "rows": rows, "knobs": knobs}


def merged_seeds(existing: dict | None, measured: dict, part: dict, report: dict) -> dict:
    """A split's entry of `report` with `measured`'s seeds replaced or added and the others kept, so that
    seeds can be run as separate parts (`--seeds 1 2` beside a committed seed 0); each part keeps its command."""
    part = part | {"seeds": measured["seeds"]}
    if existing is None:
        return measured | {"parts": [part]}
    parts = entry_parts(existing, report)
    kept = [s for s in existing["seeds"] if s not in measured["seeds"]]
    if kept and existing.get("knobs") != measured.get("knobs"):
        every = " ".join(map(str, sorted({*existing["seeds"], *measured["seeds"]})))
        raise UserError(
            f"seeds {kept} were measured with other chosen knobs (or before the choice was recorded) than this part's; "
            f"rerun the split with --seeds {every}"
        )
    by_seed = {name: dict(zip(existing["seeds"], runs, strict=True)) for name, runs in existing["rows"].items()}
    for name, runs in measured["rows"].items():
        by_seed.setdefault(name, {}).update(zip(measured["seeds"], runs, strict=True))
    seeds = sorted(kept + measured["seeds"])
    missing = [name for name, runs in by_seed.items() if set(runs) != set(seeds)]
    if missing:
        every = " ".join(map(str, seeds))
        raise UserError(f"rows {missing} lack some of seeds {seeds}; rerun the split with --seeds {every}")
    parts = [{**p, "seeds": [s for s in p["seeds"] if s in kept]} for p in parts]
    return {
        "seeds": seeds,
        "rows": {name: [runs[s] for s in seeds] for name, runs in by_seed.items()},
        "parts": [p for p in parts if p["seeds"]] + [part],
        **({"knobs": measured["knobs"]} if "knobs" in measured else {}),
    }


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else 0.0)


def cell(values: list[float | None]) -> str:
    mean, std = mean_std(values)
    return "–" if mean is None else (f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {std:.2f}")


def entry_parts(entry: dict, report: dict) -> list[dict]:
    """The commands that measured a split's seeds (one, for entries written before parts)."""
    if entry.get("parts"):
        return entry["parts"]
    return [
        {"seeds": entry["seeds"], "command": entry.get("command") or report["command"], "device": entry.get("device") or report["device"]}
    ]


def provenance(entry: dict, report: dict) -> str:
    """The command and device that wrote an entry: its own, or for entries from before each kept its own, the report's."""
    return f"`{entry.get('command') or report['command']}` ({entry.get('device') or report['device']})"


def blend_cells(runs: list[dict]) -> list[str]:
    """A row's blended accuracy overall and on few, mean w and validation score (– unless every
    seed measured the blend: a mean over some seeds would not be the row's)."""
    if not all("blended" in r for r in runs):
        return ["–"] * 4
    blends = [r["blended"] for r in runs]
    return [
        f"**{cell([b['report']['overall'] for b in blends])}**",
        cell([b["report"]["few"] for b in blends]),
        f"{statistics.fmean(b['weight'] for b in blends):.2f}",
        cell([b["validation"] for b in blends]),
    ]


REAL_ONLY_PREFIX = "fc_retrain"
"""Rows whose head saw real features only: `fc_retrain` and its variants on the shipped features,
and `fc_retrain_la` on the chosen generator's features (eval-style views), which is the fairest
real-only rival of a generator that trains on those same features."""


def blend_reading(rows: dict[str, list[dict]]) -> str | None:
    """One line that sets the featdiff row's blend beside post-hoc LA and beside the real-only heads'
    best blend (that head chosen on its validation score, like every choice here): the blend is an
    ensemble, so only the distance to a real-only blend is what the pseudo-features add. None while
    some seed lacks a blend."""
    featdiff = next(name for name in rows if name.startswith("featdiff: "))
    real_only = [name for name in rows if name.startswith(REAL_ONLY_PREFIX)]
    if not all("blended" in r for name in (featdiff, *real_only) for r in rows[name]):
        return None

    def blended(name: str, part: str) -> float:
        values = [r["blended"][part]["overall"] if part == "report" else r["blended"][part] for r in rows[name]]
        return statistics.fmean(values)

    real = max(real_only, key=lambda name: blended(name, "validation"))
    spread = [blended(name, "report") for name in real_only]
    ours, la, theirs = (
        blended(featdiff, "report"),
        mean_std([r["tuned"]["overall"] for r in rows["ce (shipped encoder)"]])[0],
        blended(real, "report"),
    )
    return (
        f"Reading: {featdiff.removeprefix('featdiff: ')}, blended, {ours:.2f} against post-hoc LA {la:.2f} ({ours - la:+.2f}) "
        f"and against the best real-only head's blend ({real}, chosen on validation) {theirs:.2f} "
        f"({ours - theirs:+.2f}: what the pseudo-features add beyond ensembling; the real-only blends span "
        f"{min(spread):.2f}–{max(spread):.2f})."
    )


KNOBS_WITHOUT_FLIPS = "the knobs are those chosen without it"
KNOBS_ON_FLIPS = "the knobs were chosen on the validation part's flipped features too"


def flip_line(knobs: dict) -> str:
    """The frozen table's line for a split scored on test-time flips, saying which features chose its knobs."""
    chosen = KNOBS_ON_FLIPS if knobs.get("selected_on_flips") else KNOBS_WITHOUT_FLIPS
    return (
        "- every head scored on test-time flips (`evaluation.test_time_flip`): each test image's feature is the mean of its own "
        f"and its mirror image's, for every method and control alike; {chosen}"
    )


def frozen_markdown(report: dict) -> str:
    lines = [
        "# Feature generation against the cheapest controls (frozen shipped encoders)",
        "",
        "Top-1 % on the **report part** of the test set (80 % of every class), mean ± std over seeds; every knob and τ chosen on the",
        "validation part (the other 20 %). `plain`: argmax of the logits; `adj.`: logit-adjusted by the prior the head was trained",
        "under (τ = 1); `tuned`: logits − τ·log(real prior) with τ chosen on the validation part (many / medium / few likewise).",
        "`blended`: the head's log-probabilities mixed with the shipped head's, (1 − w)·shipped + w·head, then logit-adjusted,",
        "(w, τ) chosen together on the validation part (w = 1 is the head alone, so a blend is never below `tuned` on",
        "validation): an ensemble of two heads, not generation, so read a generator's blend against the real-only heads'",
        "blends in the same split (`–`: the shipped head itself, or a row measured before the blend existed).",
        "Each split lists the commands that measured its seeds (a seed is run once, by one part).",
    ]
    for split, entry in report["splits"].items():
        lines += [
            "",
            f"## {split.replace(':', ' IF=')} (seeds {entry['seeds']})",
            "",
            *(f"- seeds {p['seeds']}: `{p['command']}` ({p['device']})" for p in entry_parts(entry, report)),
            *([f"- knobs scored by the validation part's `{entry['knobs']['criterion']}` accuracy"] if "knobs" in entry else []),
            *([flip_line(entry["knobs"])] if entry.get("knobs", {}).get("test_time_flip") else []),
            "",
            "| method | plain | adj. | **tuned** | many | medium | few | τ | validation "
            "| **blended** | few (blended) | w | validation (blended) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, runs in entry["rows"].items():
            tau = mean_std([r["tau"] for r in runs])[0]
            cells = [
                cell([r["plain"]["overall"] for r in runs]),
                cell([r["adjusted"]["overall"] for r in runs]),
                f"**{cell([r['tuned']['overall'] for r in runs])}**",
                *(cell([r["tuned"][g] for r in runs]) for g in GROUPS[1:]),
                f"{tau:.2f}",
                cell([r["validation"] for r in runs]),
                *blend_cells(runs),
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        reading = blend_reading(entry["rows"])
        if reading:
            lines += ["", reading]
    return "\n".join(lines) + "\n"


def selection_markdown(report: dict) -> str:
    lines = [
        "# Knobs chosen on the validation part (seed 0)",
        "",
        "Coordinate search (`featdiff.selection`): each knob in turn, an option kept only if it raises the validation part's",
        "accuracy under the split's criterion (τ, or the blend's (w, τ), chosen on that part). No report-part number is read.",
        "Each split names the command that made it and its criterion.",
    ]
    for split, entry in report["splits"].items():
        criterion = entry.get("criterion", "tuned")
        lines += ["", f"## {split.replace(':', ' IF=')}: featdiff method `{entry['featdiff']}`", ""]
        lines += [provenance(entry, report), ""]
        lines += [f"Criterion: `{criterion}` ({CRITERIA[criterion]}).", ""]
        if entry.get("test_time_flip"):
            lines += ["Scored on test-time flips: each validation image's feature is the mean of its own and its mirror image's.", ""]
        lines += ["| family | chosen overrides | validation | τ | runs | search (s) |", "|---|---|---|---|---|---|"]
        for family, chosen in entry["families"].items():
            overrides = key_of(chosen["overrides"]) if chosen["overrides"] else "defaults"
            tau = f"{chosen['tau']:g}" + (f" (w = {chosen['weight']:g})" if "weight" in chosen else "")
            runs, seconds = len(chosen["trail"]), chosen["search_s"]
            lines.append(f"| {family} | `{overrides}` | {chosen['validation_score']:.2f} | {tau} | {runs} | {seconds:.0f} |")
        for family, chosen in entry["families"].items():
            lines += ["", f"{family}, every candidate:", "", f"| overrides | validation ({criterion}) |", "|---|---|"]
            lines += [f"| `{key_of(t['overrides']) or '{}'}` | {t['validation_score']:.2f} |" for t in chosen["trail"]]
    return "\n".join(lines) + "\n"


DP_EPSILONS = (math.inf, 10.0, 1.0)
DP_RELEASE_PER_CLASS = {"cifar10": 500, "cifar100": 100}
DP_METHODS = {
    "ldmlr_dp": {"method": "ldmlr_dp"},
    "dp_linear": {"method": "dp_linear"},
    "dp_gaussian": {"method": "dp_gaussian"},
    "dp_linear+gaussian": {"method": "dp_linear", "privacy": {"linear_release": "gaussian"}},
}


def dp_config(dataset: str, seed: int, epsilon: float, method: dict, threads: int) -> dict:
    base = base_config(f"{dataset}:100", seed, method["method"], threads)
    privacy = {
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "delta": 1e-5,
        "adjacency": "add_remove_one",
        "norm_bound": 8.0,
        "split_timestep": 900,
        "phase_one_batch": 256,
        "phase_one_epochs": 20,
        "phase_two_batch": 1024,
        "phase_two_epochs": 15,
        "release_per_class": DP_RELEASE_PER_CLASS[dataset],
        "ldmlr_control": False,
        "reproducible_noise": True,
    }
    return merged(base, {"diffusion": {"schedule": "linear"}, "privacy": privacy}, {k: v for k, v in method.items() if k != "method"})


def private_rows(name: str, results: dict) -> dict[str, dict]:
    """The rows of one private run: its covered row, and for `ldmlr_dp` the non-private classifier
    on real + DP pseudo-features (labelled as such) and its same-run non-private controls."""
    if name != "ldmlr_dp":
        return {name: results}
    controls = results["controls"]
    return {
        "ldmlr_dp: DP pseudo only": controls["dp_pseudo_only"],
        "ldmlr_dp: real + DP pseudo (classifier not private)": results,
        "ce, post-hoc LA (not private)": controls["ce"],
        "fc_retrain_la (not private)": controls["fc_retrain_la"],
    }


def dp_part(dataset: str, runs: Runs, seeds: list[int], threads: int) -> dict:
    table: dict[str, dict[str, list[dict]]] = {}
    epsilons: dict[str, dict[str, list[float | None]]] = {}
    for epsilon in DP_EPSILONS:
        label = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
        for seed in seeds:
            for name, method in DP_METHODS.items():
                results = runs.run(f"{dataset}:100", f"dp-{name}-eps{label}", dp_config(dataset, seed, epsilon, method, threads))
                claimed = results["privacy"]["epsilon"]
                for row, summary in private_rows(name, results).items():
                    if "not private" in row and not math.isinf(epsilon):
                        continue  # the same numbers at every ε
                    table.setdefault(row, {}).setdefault(label, []).append(summary_of(summary))
                    epsilons.setdefault(row, {}).setdefault(label, []).append(claimed)
                first = next(iter(private_rows(name, results).values()))
                print(f"  {dataset} ε={label} seed {seed} {name}: tuned {summary_of(first)['tuned']['overall']:.2f}", flush=True)
    return {"seeds": seeds, "rows": table, "claimed_epsilon": epsilons}


def dp_markdown(report: dict) -> str:
    lines = [
        "# Private feature releases against the private controls (IF = 100, δ = 1e-5, add/remove-one)",
        "",
        "Top-1 % on the report part of the test set, mean ± std over seeds; `tuned` divides by the *released* class prior",
        "(none for ldmlr_dp's release, which never uses the counts) with τ chosen on the public validation part. Knobs fixed a priori.",
        "Rows marked *not private* train on the real features without DP. Seeded noise (replayable; no claim against the seed).",
    ]
    for dataset, entry in report["datasets"].items():
        labels = [("inf" if math.isinf(e) else f"{e:g}") for e in DP_EPSILONS]
        lines += ["", f"## {dataset} (seeds {entry['seeds']})", ""]
        lines += [provenance(entry, report), ""]
        lines += ["| method | " + " | ".join(f"ε = {'∞' if label == 'inf' else label}" for label in labels) + " | few (ε = 10) |"]
        lines += ["|---|" + "---|" * (len(labels) + 1)]
        for row, by_epsilon in entry["rows"].items():
            cells = [cell([r["tuned"]["overall"] for r in by_epsilon[label]]) if label in by_epsilon else "–" for label in labels]
            few = cell([r["tuned"]["few"] for r in by_epsilon["10"]]) if "10" in by_epsilon else "–"
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {few} |")
    return "\n".join(lines) + "\n"


def dp_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(report["datasets"])
    figure, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    positions = {"1": 0, "10": 1, "inf": 2}
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for row, by_epsilon in report["datasets"][dataset]["rows"].items():
            if "not private" in row:
                axis.axhline(mean_std([r["tuned"]["overall"] for r in by_epsilon["inf"]])[0], linestyle=":", color="grey", linewidth=1)
                continue
            labels = [label for label in positions if label in by_epsilon]
            means = [mean_std([r["tuned"]["overall"] for r in by_epsilon[label]]) for label in labels]
            axis.errorbar(
                [positions[label] for label in labels], [m for m, _ in means], yerr=[s for _, s in means], marker="o", capsize=3, label=row
            )
        axis.set_xticks(list(positions.values()), ["1", "10", "∞"])
        axis.set_xlabel("ε")
        axis.set_ylabel("top-1 % (report part, tuned)")
        axis.set_title(f"{dataset}-LT, IF = 100 (dotted: non-private controls)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def provenance_of_older_entries(report: dict, command: str, device: str) -> None:
    """Set the report-level command and device once, never replace them: they name what wrote the entries
    from before each entry kept its own, and a later part's command would misattribute those entries."""
    report.setdefault("command", command)
    report.setdefault("device", device)


def render_tables(folder: Path) -> None:
    """Rewrites each table's markdown from its committed JSON with today's renderer: the numbers
    and their provenance are the JSON's, which (like the DP plot) is left as it is."""
    renderers = {"controls_selection": selection_markdown, "controls_frozen": frozen_markdown, "controls_dp": dp_markdown}
    found = [name for name in renderers if (folder / name).with_suffix(".json").is_file()]
    if not found:
        raise UserError(f"no controls_*.json in {folder}; run a part first, or pass --out with the folder that holds them")
    for name in found:
        path = folder / name
        report = load_report(path)
        atomic_write_text(path.with_suffix(".md"), renderers[name](report))
        print(f"rendered {path.with_suffix('.md')}")


def load_report(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {"splits": {}}


def write_entry(
    path: Path, section: str, name: str, measured: dict, part: dict, render: Callable[[dict], str], *, merge_seeds: bool = False
) -> dict:
    """Sets `report[section][name]` of the report at `path` and writes the report and its markdown
    (`render`). The entry is `measured` with the part's command and device, or with `merge_seeds`
    `measured`'s seeds merged into the entry's committed ones (`merged_seeds`). The report is read
    again just before the write: parts running side by side each write their own entries, and a report
    read when this part started would drop those another part wrote since."""
    report = load_report(path)
    entries = report.setdefault(section, {})
    entries[name] = merged_seeds(entries.get(name), measured, part, report) if merge_seeds else measured | part
    provenance_of_older_entries(report, part["command"], part["device"])
    write_report(path, json.loads(strict_json(report)), render(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["select", "frozen", "dp", "render"], required=True)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=SPLITS)
    parser.add_argument("--datasets", nargs="+", choices=["cifar10", "cifar100"], default=["cifar10", "cifar100"], help="for --part dp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="for --part frozen")
    parser.add_argument(
        "--criterion", choices=list(CRITERIA), default="tuned", help="for --part select: what each option is scored by on validation"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "featdiff" / "bench-controls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--selection",
        type=Path,
        default=None,
        help="for --part frozen: the folder whose controls_selection.json holds the knobs (default: --out)",
    )
    parser.add_argument(
        "--test-time-flip",
        action="store_true",
        help="for --part select and frozen: score every head on the mean of each test image's and its mirror's features "
        "(evaluation.test_time_flip)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of every run (recorded)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_torch_caches_in_featdiff_cache()
    runs = Runs(args.workdir)
    command = "python " + " ".join(sys.argv)
    device = f"cpu, {args.threads} torch threads, one run at a time"
    part = {"command": command, "device": device}
    if args.part == "render":
        render_tables(args.out)
        return
    if args.part == "dp":
        dp_path = args.out / "controls_dp"
        for dataset in args.datasets:
            report = write_entry(dp_path, "datasets", dataset, dp_part(dataset, runs, args.seeds, args.threads), part, dp_markdown)
        dp_plot(report, dp_path.with_suffix(".png"))
        print(dp_markdown(report))
        return
    selection_path = (args.selection if args.part == "frozen" and args.selection else args.out) / "controls_selection"
    selection = load_report(selection_path)
    if args.part == "select":
        for split in args.splits:
            chosen = select(split, runs, args.threads, args.criterion, test_time_flip=args.test_time_flip)
            selection = write_entry(selection_path, "splits", split, chosen, part, selection_markdown)
        print(selection_markdown(selection))
        return
    missing = [split for split in args.splits if split not in selection["splits"]]
    if missing:
        raise UserError(f"no knob choice for {', '.join(missing)} yet; run --part select --splits {' '.join(missing)} first")
    on_flips = [split for split in args.splits if selection["splits"][split].get("test_time_flip")]
    if on_flips and not args.test_time_flip:
        raise UserError(f"the knobs of {', '.join(on_flips)} were chosen on test-time flips; pass --test-time-flip to score the same way")
    frozen_path = args.out / "controls_frozen"
    for split in args.splits:
        measured = frozen(split, selection["splits"][split], runs, args.seeds, args.threads, test_time_flip=args.test_time_flip)
        report = write_entry(frozen_path, "splits", split, measured, part, frozen_markdown, merge_seeds=True)
    print(frozen_markdown(report))


if __name__ == "__main__":
    sys.exit(exit_status(main, "controls.py"))
