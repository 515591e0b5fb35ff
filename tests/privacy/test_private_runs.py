"""Private runs from the command line: the budget is checked before anything is written, the plan
is printed without training, and a digits run carries its privacy ledger."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/digits_ldmlr_dp.yaml"
FAST = ["--set", "encoder.epochs=3", "--set", "diffusion.steps=200", "--set", "classifier.epochs=20"]
FAST += ["--set", "privacy.phase_one_epochs=2", "--set", "privacy.phase_two_epochs=3", "--set", "privacy.release_per_class=20"]


def featdiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featdiff", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


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


def test_digits_private_run_reports_its_ledger_and_controls(tmp_path):
    out = tmp_path / "dp"
    result = featdiff("run", CONFIG, *FAST, "--out", str(out))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    ledger = results["privacy"]
    assert ledger["private"] and ledger["epsilon"] <= 5.0 and ledger["delta"] == 1e-6
    assert ledger["epsilon_by_accountant"]["total"]["prv"] == pytest.approx(ledger["epsilon"])
    assert ledger["phase_one"]["steps"] > 0 and ledger["phase_two"]["noise_multiplier"] > 0
    assert "encoder" in ledger["does_not_cover"]
    assert set(results["controls"]) >= {"ce", "fc_retrain", "ldmlr", "dp_pseudo_only"}
    assert results["pseudo_counts"] == [20] * 10
    assert not (out / "checkpoints").exists()
