"""`torchrun -m featdiff run`: two CPU processes (gloo, 127.0.0.1) give one process's numbers
within a stated tolerance, only rank 0 writes the folder, and `--resume` works under torchrun."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 5.0
"""Percentage points per row on this tiny digits run: each rank's BatchNorm normalises its half
of the batch (32 images, not 64), and each rank samples its classes from its own stream."""
CONFIG = {
    "name": "ddp",
    "method": "ldmlr",
    "data": {"dataset": "digits"},
    "encoder": {"epochs": 10, "batch_size": 64},
    "diffusion": {"steps": 300, "width": 64, "batch_size": 128},
    "classifier": {"epochs": 50},
    "generation": {"count_rule": "balanced"},
    "compute": {"threads": 1},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def featdiff(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(ranks),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    ]
    command = [sys.executable, *(launcher if ranks > 1 else []), "-m", "featdiff", *args]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)


def accuracies(results: dict) -> dict[str, float]:
    rows = {name: summary["acc"]["overall"] for name, summary in results["controls"].items()}
    return rows | {results["method"]: results["acc"]["overall"]}


@pytest.mark.slow
def test_two_ranks_match_one_process_write_once_and_resume(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    alone, together = tmp_path / "alone", tmp_path / "together"
    assert featdiff("run", str(config), "--out", str(alone)).returncode == 0
    result = featdiff("run", str(config), "--out", str(together), ranks=2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("featdiff: run folder") == 1 and "(2 ranks)" in result.stdout  # rank 0 speaks, once
    one, two = (json.loads((folder / "results.json").read_text()) for folder in (alone, together))
    for name, accuracy in accuracies(one).items():
        assert abs(accuracies(two)[name] - accuracy) <= TOLERANCE, (name, accuracy, accuracies(two)[name])
    lines = [json.loads(line) for line in (together / "metrics.jsonl").read_text().splitlines()]
    assert len([line for line in lines if line["stage"] == "encoder"]) == CONFIG["encoder"]["epochs"]  # one writer
    # Resume under torchrun: the last stage is gone (as if killed inside it) and runs again, to the same numbers.
    (together / "results.json").unlink()
    (together / "stages" / "classifier.done").unlink()
    resumed = featdiff("run", "--resume", str(together), ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert accuracies(json.loads((together / "results.json").read_text())) == accuracies(two)


def test_a_private_method_is_refused_under_torchrun_before_its_folder_exists(tmp_path):
    config = tmp_path / "dp.yaml"
    config.write_text(yaml.safe_dump({"method": "dp_linear", "data": {"dataset": "digits"}, "privacy": {"epsilon": 5.0, "delta": 1e-6}}))
    result = featdiff("run", str(config), "--out", str(tmp_path / "run"), ranks=2)
    assert result.returncode != 0 and "runs in one process, not under torchrun" in result.stderr
    assert not (tmp_path / "run").exists()
