"""The benchmarks' long sweeps run in parts (a seed per invocation); a part must replace only what it
reran and keep every other part's rows, or a table would silently mix or lose seeds. The goal readouts
the README quotes are judged from the rows as the issue states each goal."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from featdiff.errors import UserError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def summary(value: float) -> dict:
    return {"tuned": {"overall": value}}


def test_controls_part_adds_seeds_beside_the_committed_ones_and_replaces_a_rerun_seed():
    controls = benchmark("controls")
    committed = {"seeds": [0], "rows": {"ce": [summary(1.0)], "gaussian": [summary(2.0)]}, "command": "c0", "device": "d"}
    more = {"seeds": [2, 1], "rows": {"ce": [summary(12.0), summary(11.0)], "gaussian": [summary(22.0), summary(21.0)]}}
    merged = controls.merged_seeds(committed, more, {"command": "c12", "device": "d"}, {"command": "old", "device": "d"})
    assert merged["seeds"] == [0, 1, 2]
    assert [r["tuned"]["overall"] for r in merged["rows"]["gaussian"]] == [2.0, 21.0, 22.0]
    assert [(p["command"], p["seeds"]) for p in merged["parts"]] == [("c0", [0]), ("c12", [2, 1])]

    rerun = controls.merged_seeds(
        merged, {"seeds": [0], "rows": {"ce": [summary(5.0)], "gaussian": [summary(6.0)]}}, {"command": "r0", "device": "d"}, {}
    )
    assert [r["tuned"]["overall"] for r in rerun["rows"]["ce"]] == [5.0, 11.0, 12.0]
    assert [(p["command"], p["seeds"]) for p in rerun["parts"]] == [("c12", [2, 1]), ("r0", [0])]


def test_controls_part_that_lacks_a_row_for_a_kept_seed_is_refused():
    controls = benchmark("controls")
    committed = {"seeds": [0], "rows": {"ce": [summary(1.0)]}, "command": "c0", "device": "d"}
    with pytest.raises(UserError, match="lack some of seeds"):
        controls.merged_seeds(
            committed, {"seeds": [1], "rows": {"ce": [summary(2.0)], "new row": [summary(3.0)]}}, {"command": "c", "device": "d"}, {}
        )


def test_controls_seeds_measured_under_other_knob_choices_are_never_one_mean():
    """A frozen split's chosen rows depend on the knob search; a part whose search chose otherwise (another
    criterion, a rerun that chose differently) may replace every committed seed, never join them."""
    controls = benchmark("controls")
    tuned = controls.knob_choice({"featdiff": "ldmlr", "families": {"ldmlr": {"overrides": {"a": 1}}}})
    blended = controls.knob_choice({"featdiff": "ldmlr", "families": {"ldmlr": {"overrides": {"a": 2}}}, "criterion": "blended"})
    assert tuned["criterion"] == "tuned" and tuned != blended
    rows = {"ce": [summary(1.0), summary(2.0)]}
    committed = {"seeds": [0, 1], "rows": rows, "knobs": tuned, "parts": [{"seeds": [0, 1], "command": "c"}]}
    with pytest.raises(UserError, match="other chosen knobs.*--seeds 0 1 2"):
        controls.merged_seeds(committed, {"seeds": [2], "rows": {"ce": [summary(3.0)]}, "knobs": blended}, {"command": "b2"}, {})
    with pytest.raises(UserError, match="other chosen knobs"):  # committed before the choice was recorded
        controls.merged_seeds({k: v for k, v in committed.items() if k != "knobs"}, {"seeds": [2], "rows": {}, "knobs": tuned}, {}, {})

    same = controls.merged_seeds(committed, {"seeds": [2], "rows": {"ce": [summary(3.0)]}, "knobs": tuned}, {"command": "t2"}, {})
    assert same["seeds"] == [0, 1, 2] and same["knobs"] == tuned
    replaced = controls.merged_seeds(
        committed, {"seeds": [0, 1], "rows": {"ce": [summary(5.0), summary(6.0)]}, "knobs": blended}, {"command": "b01"}, {}
    )
    assert replaced["knobs"] == blended and [r["tuned"]["overall"] for r in replaced["rows"]["ce"]] == [5.0, 6.0]
    assert [p["command"] for p in replaced["parts"]] == ["b01"]


def test_controls_entry_written_before_parts_takes_the_reports_command():
    controls = benchmark("controls")
    committed = {"seeds": [0], "rows": {"ce": [summary(1.0)]}}  # the command was kept only report-wide then
    merged = controls.merged_seeds(
        committed, {"seeds": [1], "rows": {"ce": [summary(2.0)]}}, {"command": "c1", "device": "d"}, {"command": "c0", "device": "cpu"}
    )
    assert [(p["command"], p["device"], p["seeds"]) for p in merged["parts"]] == [("c0", "cpu", [0]), ("c1", "d", [1])]


def test_controls_later_part_keeps_the_command_of_entries_written_before_per_entry_commands():
    """A report-level command names what wrote the older entries; a later part that replaced it would put its
    own command under a split it never ran (as happened to CIFAR-10 IF=100's knob choice)."""
    controls = benchmark("controls")
    selection = {"splits": {"cifar10:100": {"featdiff": "gaussian", "families": {}}}, "command": "select cifar10:100", "device": "d0"}
    selection["splits"]["cifar100:10"] = {"featdiff": "ldmlr", "families": {}, "command": "select cifar100:10", "device": "d1"}
    controls.provenance_of_older_entries(selection, "select cifar100:10", "d1")
    markdown = controls.selection_markdown(selection)
    older, newer = markdown.split("## cifar100 IF=10")
    assert "`select cifar10:100` (d0)" in older and "cifar100:10" not in older.split("## cifar10 IF=100")[1]
    assert "`select cifar100:10` (d1)" in newer

    fresh = {"splits": {}}
    controls.provenance_of_older_entries(fresh, "first", "d")
    controls.provenance_of_older_entries(fresh, "second", "d")
    assert fresh["command"] == "first"


def test_controls_parts_side_by_side_keep_each_others_entries_and_merge_seeds(tmp_path):
    """Each entry is written into the report as it is on disk at that moment: a part that read the report
    before another part wrote its entry keeps that entry (the DP part once wrote back what it had read at
    its start, dropping a dataset written meanwhile); a frozen split merges its seeds into those there."""
    controls = benchmark("controls")
    path = tmp_path / "controls_dp"
    started = controls.load_report(path)  # what a part that starts now would have read
    controls.write_entry(path, "datasets", "cifar10", {"seeds": [0]}, {"command": "c10", "device": "d"}, json.dumps)
    report = controls.write_entry(path, "datasets", "cifar100", {"seeds": [0]}, {"command": "c100", "device": "d"}, json.dumps)
    assert started == {"splits": {}}
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == report and sorted(on_disk["datasets"]) == ["cifar10", "cifar100"]
    assert [on_disk["datasets"][d]["command"] for d in ("cifar10", "cifar100")] == ["c10", "c100"] and on_disk["command"] == "c10"
    assert json.loads(path.with_suffix(".md").read_text()) == on_disk

    frozen = tmp_path / "controls_frozen"
    for seed in (0, 1):
        measured = {"seeds": [seed], "rows": {"ce": [summary(float(seed))]}}
        controls.write_entry(
            frozen, "splits", "cifar10:100", measured, {"command": f"s{seed}", "device": "d"}, json.dumps, merge_seeds=True
        )
    entry = json.loads(frozen.with_suffix(".json").read_text())["splits"]["cifar10:100"]
    assert entry["seeds"] == [0, 1] and [r["tuned"]["overall"] for r in entry["rows"]["ce"]] == [0.0, 1.0]
    assert [(p["command"], p["seeds"]) for p in entry["parts"]] == [("s0", [0]), ("s1", [1])]


def fed_row(dataset: str, seed: int, acc: float) -> dict:
    return {"method": "m", "setting": f"{dataset}, α = 0.5", "dataset": dataset, "seed": seed, "acc": acc}


def test_federated_part_replaces_only_its_seeds_and_datasets(tmp_path):
    federated = benchmark("federated")
    out = tmp_path / "federated_harder"
    committed = {
        "preset": "harder",
        "rounds": 30,
        "seeds": [0, 1],
        "federations": [["cifar10", 0.5, 50, 10], ["cifar100", 0.5, 50, 10]],
        "rows": [fed_row("cifar10", 0, 1.0), fed_row("cifar10", 1, 2.0), fed_row("cifar100", 1, 3.0)],
        "curves": {"cifar10, α = 0.5": {"m": [[{"round": 1}], [{"round": 2}]]}},
        "machine": "x86_64, 1 threads",
        "threads": 1,
        "command": "python benchmarks/federated.py --preset harder",
        "wall_s": 60.0,
    }
    out.with_suffix(".json").write_text(json.dumps(committed))
    fresh = {"preset": "harder", "rounds": 30, "seeds": [1], "federations": [], "rows": [], "curves": {}, "curve_seed": {}, "parts": []}
    merged = federated.merged_report(out, fresh, [("cifar10", 0.5, 50, 10)], [1])
    assert [(r["dataset"], r["seed"]) for r in merged["rows"]] == [("cifar10", 0), ("cifar100", 1)]
    assert merged["curves"] == {"cifar10, α = 0.5": {"m": [{"round": 1}]}} and merged["curve_seed"] == {"cifar10, α = 0.5": 0}
    assert merged["parts"][0]["command"] == committed["command"] and merged["parts"][0]["reused"] is None

    federated.keep_curve(merged, {"setting": "cifar10, α = 0.5", "seed": 1}, "m", [{"round": 9}])
    assert merged["curves"]["cifar10, α = 0.5"]["m"] == [{"round": 1}], "the lowest seed's curve is the one plotted"

    out.with_suffix(".json").write_text(json.dumps(committed | {"rows": committed["rows"][:2], "seeds": [0, 1]}))
    only_cifar10 = federated.merged_report(out, fresh, [("cifar10", 0.5, 50, 10)], [1])
    assert only_cifar10["parts"][0]["seeds"] == [0], "the committed part no longer measured seed 1"
    out.with_suffix(".json").write_text(json.dumps(committed))

    everything = federated.merged_report(out, fresh | {"seeds": [0, 1]}, [("cifar10", 0.5, 50, 10), ("cifar100", 0.5, 50, 10)], [0, 1])
    assert everything["rows"] == [] and everything["parts"] == [] and everything["curves"] == {}

    with pytest.raises(UserError, match="choose another --out"):
        federated.merged_report(out, fresh | {"rounds": 12}, [("cifar10", 0.5, 50, 10)], [1])


def test_federated_parts_written_side_by_side_keep_each_others_rows(tmp_path):
    """Two parts (seeds 1 and 2) run at once into one report: each write re-reads it, so neither part's
    rows are lost whichever writes last."""
    federated = benchmark("federated")
    out = tmp_path / "federated_harder"
    federation = ("cifar10", 0.5, 50, 10)
    fresh = {"preset": "harder", "rounds": 30, "seeds": [], "federations": [], "rows": [], "curves": {}, "curve_seed": {}, "parts": []}

    def write(seed: int, acc: float) -> None:
        mine = {"rows": [fed_row("cifar10", seed, acc)], "curves": {"cifar10, α = 0.5": {"m": [{"round": seed}]}}, "curve_seed": {}}
        mine["curve_seed"]["cifar10, α = 0.5"] = seed
        part = {"command": f"part {seed}", "seeds": [seed], "datasets": ["cifar10"], "threads": 1, "wall_s": acc, "reused": 0}
        report = federated.with_part(federated.merged_report(out, fresh | {"seeds": [seed]}, [federation], [seed]), mine, part)
        out.with_suffix(".json").write_text(json.dumps(report))

    write(1, 10.0)
    write(2, 20.0)
    write(1, 11.0)  # part 1's second write, after part 2's first
    report = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["seed"], r["acc"]) for r in report["rows"]) == [(1, 11.0), (2, 20.0)]
    assert sorted((p["command"], p["wall_s"]) for p in report["parts"]) == [("part 1", 11.0), ("part 2", 20.0)]
    assert report["seeds"] == [1, 2] and report["curve_seed"] == {"cifar10, α = 0.5": 1}
    assert report["curves"]["cifar10, α = 0.5"]["m"] == [{"round": 1}]


def test_a_benchmark_refuses_a_report_of_another_preset_in_one_line_with_status_2(tmp_path):
    out = tmp_path / "federated_harder"
    out.with_suffix(".json").write_text(json.dumps({"preset": "private", "rounds": 30}))
    command = [sys.executable, str(BENCHMARKS / "federated.py"), "--preset", "harder", "--out", str(out), "--workdir", str(tmp_path / "w")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        f"federated.py: error: {out.with_suffix('.json')} holds preset 'private' with 30 rounds; choose another --out"
    ]
    assert json.loads(out.with_suffix(".json").read_text()) == {"preset": "private", "rounds": 30}


def blended_summary(tuned: float, report: float, validation: float) -> dict:
    return {"tuned": {"overall": tuned}, "blended": {"report": {"overall": report}, "validation": validation, "weight": 0.5}}


def test_controls_blend_reading_picks_the_real_only_blend_on_validation_not_on_report():
    controls = benchmark("controls")
    rows = {
        "ce (shipped encoder)": [summary(60.0), summary(60.0)],
        "fc_retrain": [blended_summary(58.0, 61.0, 62.0), blended_summary(58.0, 61.0, 62.0)],
        # the best report blend, but the worst on validation: a table must not pick it
        "fc_retrain_la (logit-adjusted loss)": [blended_summary(58.0, 63.0, 60.0), blended_summary(58.0, 63.0, 60.0)],
        "fc_retrain_normalized": [blended_summary(58.0, 60.0, 61.0), blended_summary(58.0, 60.0, 61.0)],
        "featdiff: ldmlr (chosen on validation)": [blended_summary(59.0, 62.0, 62.5), blended_summary(59.0, 61.0, 62.5)],
    }
    line = controls.blend_reading(rows)
    assert "61.50 against post-hoc LA 60.00 (+1.50)" in line
    assert "(fc_retrain, chosen on validation) 61.00 (+0.50" in line
    assert "span 60.00–63.00" in line
    # the LA-loss head on the chosen generator's features is a real-only rival too, and here the best on validation
    rows["fc_retrain_la (the chosen ldmlr's features, same run)"] = [blended_summary(58.0, 61.25, 62.2)] * 2
    assert "(fc_retrain_la (the chosen ldmlr's features, same run), chosen on validation) 61.25 (+0.25" in controls.blend_reading(rows)

    rows["fc_retrain"][1] = summary(58.0)  # a seed measured before the blend existed
    assert controls.blend_reading(rows) is None


def test_controls_render_rewrites_a_stale_table_from_its_json_and_leaves_the_json_alone(tmp_path):
    committed = (BENCHMARKS / "results" / "controls_selection.json").read_bytes()
    (tmp_path / "controls_selection.json").write_bytes(committed)
    (tmp_path / "controls_selection.md").write_text("a table rendered by older code\n")
    command = [sys.executable, str(BENCHMARKS / "controls.py"), "--part", "render", "--out", str(tmp_path)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    table = (tmp_path / "controls_selection.md").read_text()
    splits = json.loads(committed)["splits"]
    assert table.count("Criterion: `") == len(splits) > 0
    assert all(entry["command"] in table for entry in splits.values())
    assert (tmp_path / "controls_selection.json").read_bytes() == committed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["controls_selection.json", "controls_selection.md"]  # nothing invented

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run([*command[:-1], str(empty)], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and "no controls_*.json" in refused.stderr


def fake_results() -> dict:
    """The fields of a run's results.json that a frozen controls row reads."""
    groups = {"overall": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0}
    head = {
        "report": {"acc": groups, "acc_adjusted": groups},
        "tuned": {"tau": 1.0, "report": {"acc": groups}, "validation": {"acc": groups}},
    }
    names = ("ce", "fc_retrain", "fc_retrain_la", "fc_retrain_normalized", "gaussian")
    return head | {"controls": {name: head for name in names}}


class RecordedRuns:
    """A `Runs` stand-in that keeps every config it is asked to run."""

    def __init__(self) -> None:
        self.values: list[dict] = []

    def run(self, split: str, label: str, values: dict) -> dict:
        self.values.append(values)
        return fake_results()


def test_controls_test_time_flip_reaches_every_run_and_never_joins_seeds_scored_without_it():
    controls = benchmark("controls")
    selection = {"featdiff": "ldmlr", "families": {"gaussian": {"overrides": {}}, "ldmlr": {"overrides": {"diffusion": {"guidance": 0.7}}}}}

    plain, flipped = RecordedRuns(), RecordedRuns()
    without = controls.frozen("cifar10:100", selection, plain, [0], 1)
    with_flip = controls.frozen("cifar10:100", selection, flipped, [0], 1, test_time_flip=True)
    assert len(flipped.values) == 3 and all(v["evaluation"]["test_time_flip"] is True for v in flipped.values)
    assert flipped.values[2]["diffusion"] == {"guidance": 0.7}  # the chosen knobs still apply
    assert all("evaluation" not in v for v in plain.values)  # runs without it keep the folders (hashes) they had
    assert with_flip["knobs"]["test_time_flip"] is True and "test_time_flip" not in without["knobs"]

    committed = without | {"parts": [{"seeds": [0], "command": "c0"}]}
    with pytest.raises(UserError, match="other chosen knobs"):
        controls.merged_seeds(committed, with_flip | {"seeds": [1]}, {"command": "f1"}, {})
    markdown = controls.frozen_markdown(
        {"splits": {"cifar10:100": controls.merged_seeds(None, with_flip, {"command": "f", "device": "d"}, {})}}
    )
    assert "test-time flips" in markdown
    assert "test-time flips" not in controls.frozen_markdown(
        {"splits": {"cifar10:100": controls.merged_seeds(None, without, {"command": "p", "device": "d"}, {})}}
    )


def test_controls_knob_search_on_flips_scores_every_candidate_on_flips_and_says_so_in_the_frozen_table(capsys):
    controls = benchmark("controls")
    plain, flipped = RecordedRuns(), RecordedRuns()
    without = controls.select("cifar10:100", plain, 1, "tuned")
    on_flips = controls.select("cifar10:100", flipped, 1, "tuned", test_time_flip=True)
    assert len(flipped.values) == len(plain.values) >= len(controls.FAMILIES)
    assert all(v["evaluation"] == {"controls": False, "test_time_flip": True} for v in flipped.values)
    assert all(v["evaluation"] == {"controls": False} for v in plain.values)  # older searches keep their run folders
    assert on_flips["test_time_flip"] is True and "test_time_flip" not in without
    assert controls.knob_choice(on_flips)["selected_on_flips"] is True and "selected_on_flips" not in controls.knob_choice(without)
    assert "Scored on test-time flips" in controls.selection_markdown({"command": "s", "device": "d", "splits": {"cifar10:100": on_flips}})

    def table(selection: dict) -> str:
        measured = controls.frozen("cifar10:100", selection, RecordedRuns(), [0], 1, test_time_flip=True)
        return controls.frozen_markdown(
            {"splits": {"cifar10:100": controls.merged_seeds(None, measured, {"command": "f", "device": "d"}, {})}}
        )

    assert controls.KNOBS_ON_FLIPS in table(on_flips) and controls.KNOBS_WITHOUT_FLIPS not in table(on_flips)
    assert controls.KNOBS_WITHOUT_FLIPS in table(without) and controls.KNOBS_ON_FLIPS not in table(without)


@pytest.mark.parametrize("selection_elsewhere", [False, True], ids=["selection in --out", "selection from --selection"])
def test_controls_refuses_to_score_knobs_chosen_on_flips_without_flips_in_one_line_with_status_2(
    tmp_path, selection_elsewhere, monkeypatch, capsys
):
    out = tmp_path / "out"
    chosen = tmp_path / "chosen" if selection_elsewhere else out
    chosen.mkdir(parents=True)
    out.mkdir(exist_ok=True)
    selection = {"splits": {"cifar10:100": {"featdiff": "gaussian", "families": {}, "test_time_flip": True}}}
    (chosen / "controls_selection.json").write_text(json.dumps(selection))
    arguments = ["controls.py", "--part", "frozen", "--splits", "cifar10:100", "--out", str(out), "--workdir", str(tmp_path / "w")]
    arguments += ["--selection", str(chosen)] if selection_elsewhere else []
    monkeypatch.setattr(sys, "argv", arguments)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # main sets it only where unset; restored after
    controls = benchmark("controls")
    assert controls.exit_status(controls.main, "controls.py") == 2  # as its __main__ runs it
    assert capsys.readouterr().err.splitlines() == [
        "controls.py: error: the knobs of cifar10:100 were chosen on test-time flips; pass --test-time-flip to score the same way"
    ]
    assert sorted(p.name for p in out.iterdir()) == ([] if selection_elsewhere else ["controls_selection.json"])  # no run, no table


def federation_rows(acc: dict[str, float], frechet: dict[str, float], bank: tuple[float, float], refresh_rate: float) -> list[dict]:
    """Two seeds of one federation whose means are `acc` and `frechet` exactly (the seeds straddle each mean by
    0.25, which binary floats hold exactly, so a margin at a threshold is exactly at it)."""
    rows = []
    for offset in (-0.25, 0.25):
        for method, value in acc.items():
            row = {"method": method, "setting": "cifar10, α = 0.5, 20 clients (8 per round)", "acc": {"overall": value + offset}}
            if method in frechet:
                row["frechet"] = frechet[method] + offset
            if method == "progressive":
                row |= {"refresh_rate": refresh_rate, "bank_frechet": list(bank)}
            rows.append(row)
    return rows


def test_federated_goals_are_judged_at_the_issues_thresholds_on_the_means():
    federated = benchmark("federated")
    acc = {
        federated.LA_HEAD: 80.0,
        federated.FREE_CONTROL: 81.0,
        federated.CENTRAL_LDMLR: 82.0,
        "fedavg": 81.5,
        "fedddpm": 81.4,
        "fedddpm_plus": 80.0,
        "progressive": 81.5,
        federated.FIXED_CORRECTION: 79.0,
    }
    frechet = {"fedavg": 2.0, "fedddpm": 2.0, "progressive": 2.0}
    verdicts = {}
    for line in federated.goal_lines(federation_rows(acc, frechet, (3.0, 1.0), 0.25))[4:-1]:
        goal, margin, reached = line.strip("|").split(" | ")
        verdicts[goal.strip()] = (float(margin), reached.strip())
    assert list(verdicts.values()) == [
        (0.5, "yes"),  # best denoiser (fedavg; progressive ties it) − gaussian_stats, exactly the +0.5 asked
        (1.5, "yes"),
        (-0.5, "yes"),  # exactly 0.5 below centralised LDMLR
        (0.0, "yes"),  # progressive ties max(fedavg, fedddpm)
        (0.25, "yes"),
        (2.0, "yes"),
        (0.0, "yes"),  # Fréchet equal to fedavg's is not above it
        (0.0, "yes"),
    ]
    worse = federated.goal_lines(
        federation_rows(acc | {"progressive": 81.45, federated.FREE_CONTROL: 81.01}, frechet | {"progressive": 2.01}, (1.0, 1.0), 0.24)
    )
    assert [line.rsplit("|", 2)[1].strip() for line in worse[4:-1]] == [
        "**no**",
        "yes",
        "yes",
        "**no**",
        "**no**",
        "**no**",
        "yes",
        "**no**",
    ]


def test_private_federation_goals_hold_only_at_the_stated_epsilon():
    federated = benchmark("federated")
    acc = {"DP-FedAvg LA head (control)": 76.0, "DP class statistics' Gaussian (control)": 80.0, "release": 40.0, "release + head": 73.0}
    rows = [
        {"method": m, "setting": "cifar10, α = 0.5, 20 clients (8 per round), ε = 10 per client", "acc": {"overall": v}}
        for m, v in acc.items()
    ]
    at_ten = federated.goal_lines(rows)
    assert "release + head" in at_ten[4] and "| +3.000 | yes |" in at_ten[4]
    assert "DP class statistics' Gaussian" in at_ten[5] and "| -7.000 | **no** |" in at_ten[5]
    at_three = federated.goal_lines([r | {"setting": r["setting"].replace("ε = 10", "ε = 3")} for r in rows])
    assert all(line.endswith("| no goal at this ε |") for line in at_three[4:-1])
