"""Private runs from the command line: the budget is checked before anything is written, the plan
is printed without training, a digits run carries its privacy ledger and keeps its non-private
control apart, and its noise cannot be replayed from the seed unless the config asks for it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/digits_ldmlr_dp.yaml"
FAST = ["--set", "encoder.epochs=3", "--set", "diffusion.steps=200", "--set", "classifier.epochs=20"]
FAST += ["--set", "privacy.phase_one_epochs=2", "--set", "privacy.phase_two_epochs=3", "--set", "privacy.release_per_class=20"]


def featdiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featdiff", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def run_in_process(capsys, *args: str) -> str:
    """`featdiff run CONFIG ARGS` in this process (a private run's start-up, imports and noise
    calibration, costs more than its training here; the command itself is tested from a new
    interpreter above and in test_cli.py). Returns what it printed."""
    from featdiff.cli import main

    status = main(["run", str(PROJECT_ROOT / CONFIG), *args])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    return printed.out


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "warn" not in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("featdiff: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("privacy.epsilon=0.3", ("Phase I alone", "privacy.split_timestep", "privacy.norm_bound")),
        ("privacy.delta=0.01", ("privacy.delta", "1/N")),
        ("privacy.norm_bound=0", ("privacy.norm_bound", "> 0")),
        ("privacy.draws=0", ("privacy.draws", ">= 1")),
        ("privacy.accountant=rdp", ("privacy.accountant", "'prv'")),
    ],
)
def test_bad_privacy_settings_give_one_line_and_write_nothing(tmp_path, override, fragments):
    out = tmp_path / "run"
    assert_one_line_error(featdiff("run", CONFIG, "--set", override, "--out", str(out)), *fragments)
    assert not out.exists()


def test_privacy_command_prints_both_accountants_and_the_calibrated_noise():
    result = featdiff("privacy", CONFIG)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert {"I (t >= S)", "II (t < S)", "total"} <= set(rows)
    total = [cell.strip() for cell in rows["total"].split("|")[1:-1]]
    clt, tight = float(total[4]), float(total[5])
    assert clt < tight <= 5.0 and tight >= 0.99 * 5.0
    assert "claimed (prv)" in result.stdout
    assert "operating system's entropy" in result.stdout
    bound = [line for line in result.stdout.splitlines() if "Bounded record by record" in line]
    assert len(bound) == 1 and float(bound[0].rsplit("total ε = ", 1)[1]) > tight


def test_privacy_command_says_when_the_noise_is_seeded(capsys):
    """In this process (the command's output as above, without a second interpreter start)."""
    from featdiff.cli import main

    assert main(["privacy", str(PROJECT_ROOT / CONFIG), "--set", "privacy.reproducible_noise=true"]) == 0
    assert "does not hold against anyone who knows the seed" in capsys.readouterr().out


def test_privacy_command_claims_the_per_record_bound_when_asked(capsys):
    from featdiff.cli import main

    per_record = ["--set", "privacy.phase_one_accounting=per_record"]
    assert main(["privacy", str(PROJECT_ROOT / CONFIG), *FAST, *per_record]) == 0
    out = capsys.readouterr().out
    claimed = float(out.split("claimed (prv, Phase I per record) ", 1)[1].split()[0])
    assert f"the claim is total ε = {claimed:.3f}" in out and 0.99 * 5.0 <= claimed <= 5.0


def test_privacy_command_refuses_a_non_private_method():
    result = featdiff("privacy", "configs/digits_ldmlr.yaml")
    assert_one_line_error(result, "method ldmlr_dp", "method: ldmlr_dp")
    assert result.stdout == ""


@pytest.mark.slow
def test_a_digits_private_run_reports_its_ledger_and_a_second_one_draws_other_noise(tmp_path, capsys):
    """Two private runs of one config and seed, with the default (unreplayable) noise: the first
    one's ledger, files and terminal summary, then what differs between the two. One test, so the
    two runs are made once whichever worker runs it."""
    outputs = [run_in_process(capsys, *FAST, "--out", str(tmp_path / name)) for name in ("first", "second")]
    out, stdout = tmp_path / "first", outputs[0]
    results = json.loads((out / "results.json").read_text())
    ledger = results["privacy"]
    assert ledger["private"] and ledger["epsilon"] <= 5.0 and ledger["delta"] == 1e-6
    assert ledger["epsilon_by_accountant"]["total"]["prv"] == pytest.approx(ledger["epsilon"])
    assert ledger["phase_one"]["steps"] > 0 and ledger["phase_two"]["noise_multiplier"] > 0
    assert "encoder" in ledger["does_not_cover"]
    assert set(results["controls"]) >= {"ce", "fc_retrain", "ldmlr", "dp_pseudo_only"}
    assert results["pseudo_counts"] == [20] * 10
    assert not (out / "checkpoints").exists()
    assert ledger["reproducible_noise"] is False and "entropy" in ledger["noise_source"]
    assert "to be audited" not in ledger["does_not_cover"] and "found no leak" in ledger["does_not_cover"]
    # The guarantee names exactly the files it covers; the non-private control lives apart.
    covered = set(ledger["covered_files"])
    assert covered == {
        "dp_phase_one.safetensors",
        "dp_denoiser.safetensors",
        "dp_pseudo_features.safetensors",
        "dp_pseudo_classifier.safetensors",
    }
    assert all((out / name).is_file() for name in covered)
    assert {path.name for path in (out / "control").iterdir()} == {"denoiser.safetensors", "pseudo_features.safetensors"}
    assert not (out / "denoiser.safetensors").exists() and not (out / "pseudo_features.safetensors").exists()
    assert ledger["covered_rows"] == ["dp_pseudo_only"]
    # The terminal summary gives ε and the rows it covers.
    summary = [line for line in stdout.splitlines() if line.startswith("privacy: ")]
    assert len(summary) == 2 and f"ε = {ledger['epsilon']:.3g}" in summary[0] and "covers the row dp_pseudo_only only" in summary[0]
    # ... and what ε assumes about Phase I, with the ε that holds without that argument.
    per_record = ledger["epsilon_with_phase_one_per_record"]
    assert per_record > ledger["epsilon"] and f"ε = {per_record:.3g}" in ledger["assumes"] and ledger["assumes"] in summary[1]
    # Two runs with the same seed draw different noise.
    first, second = tmp_path / "first", tmp_path / "second"
    a, b = load_file(first / "dp_denoiser.safetensors"), load_file(second / "dp_denoiser.safetensors")
    assert a.keys() == b.keys()
    assert any(not a[name].equal(b[name]) for name in a)
    # The seeded parts (encoder, non-private control) are the same in both runs.
    for name in ("encoder.safetensors", "control/denoiser.safetensors"):
        x, y = load_file(first / name), load_file(second / name)
        assert all(x[key].equal(y[key]) for key in x), name


def test_reproducible_noise_replays_a_run_bit_for_bit_and_says_what_that_costs(tmp_path, capsys):
    seeded = [*FAST, "--set", "privacy.reproducible_noise=true", "--set", "privacy.ldmlr_control=false"]
    outputs = [run_in_process(capsys, *seeded, "--out", str(tmp_path / name)) for name in ("first", "second")]
    for name in ("dp_denoiser.safetensors", "dp_pseudo_features.safetensors"):
        a, b = load_file(tmp_path / "first" / name), load_file(tmp_path / "second" / name)
        assert all(a[key].equal(b[key]) for key in a), name
    ledger = json.loads((tmp_path / "first" / "results.json").read_text())["privacy"]
    assert ledger["reproducible_noise"] is True
    for text in (ledger["noise_source"], ledger["covers"], outputs[0]):
        assert "does not hold against anyone who knows the seed" in text
