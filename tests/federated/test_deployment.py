"""The same apps on Flower's simulation engine and on a real SuperLink with three SuperNodes on
localhost (TLS, as the README deploys them), each against the in-process grid: the same final
weights and bytes. The deployment runs a non-editable install of this checkout in a fresh venv,
from a folder outside the repository, and loses a SuperNode mid-run. Every test starts and stops
what it uses, so each passes alone and in any order."""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
import torch
from flwr.app import Message
from safetensors.torch import load_file
from tls_certificates import certificates

from featdiff.config import load_config
from featdiff.federated.client_app import make_client_app
from featdiff.federated.launch import run_here, settings_for
from featdiff.federated.local_grid import InProcessGrid
from featdiff.federated.server_app import serve
from featdiff.runs import Run

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 3
KILLED = CLIENTS - 1
"""The partition whose SuperNode is killed once round 1 is logged."""
STARTUP_S, RUN_S = 120, 600
"""Deadlines, not expectations: generous for a loaded 2-core machine."""


def wait_until(condition, seconds: float, what: str, alive: Iterable[subprocess.Popen] = (), log: Path | None = None) -> None:
    """Poll `condition` until it holds; fail at the deadline, or at once if a process in `alive`
    exits, with the end of `log`."""
    deadline = time.monotonic() + seconds
    while not condition():
        for process in alive:
            assert process.poll() is None, f"{process.args[0]} exited ({process.returncode}) while waiting for {what}\n{tail(log)}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s\n{tail(log)}"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without PYTHONPATH (the tests run with PYTHONPATH=src) or an active venv."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | {"OMP_NUM_THREADS": "1"} | extra


def tail(path: Path | None) -> str:
    if path is None:
        return ""
    return path.read_text(errors="replace")[-4000:] if path.exists() else f"({path} not written)"


def prepared(config: Path, folder: Path) -> dict:
    Run.create(folder, load_config(config))
    return settings_for(folder, resume=False)


def round_logged(folder: Path) -> bool:
    metrics = folder / "metrics.jsonl"
    return metrics.exists() and '"stage": "round"' in metrics.read_text()


def assert_same_run(expected: Path, got: Path) -> None:
    """Bit-identical final weights: replies are averaged in partition order whatever order they
    arrive in, and every random stream is named by (seed, round, client). The same rounds, the
    same missing clients and the same bytes of serialised content, whatever the transport."""
    first, second = (load_file(folder / "denoiser.safetensors") for folder in (expected, got))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    rounds = [json.loads((folder / "results.json").read_text())["rounds"] for folder in (expected, got)]
    for key in ("round", "missing", "up_bytes", "down_bytes"):
        assert [entry[key] for entry in rounds[0]] == [entry[key] for entry in rounds[1]], key


@pytest.mark.slow
def test_the_simulation_engine_gives_the_in_process_weights_and_leaves_nothing_behind(make_config, tmp_path):
    """`featdiff federated --engine simulation` as a user runs it: the in-process weights, no
    deprecation warning, and no Ray session left in the temporary folder (Ray's default
    RAY_TMPDIR/ray is pointed there too). The folder's name is short: Ray's socket paths under it
    must stay below 108 bytes."""
    config = make_config(clients=CLIENTS, clients_per_round=CLIENTS, rounds=2, head_rounds=0, warmup_steps=5, probe_every=10)
    scratch = Path(tempfile.mkdtemp(prefix="fd-"))
    env = os.environ | {"TMPDIR": str(scratch), "RAY_TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "featdiff", "federated", str(config), "--engine", "simulation", "--out", str(tmp_path / "simulation")]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_S)
        left = sorted(str(path.relative_to(scratch)) for path in scratch.rglob("*"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    run_here(prepared(config, tmp_path / "inprocess"), CLIENTS, "inprocess")
    assert_same_run(tmp_path / "inprocess", tmp_path / "simulation")
    assert "deprecat" not in output.lower(), output[-4000:]
    assert left == [], f"left behind in the temporary folder: {left[:5]}"


def install_non_editable(venv: Path, scratch: Path) -> Path:
    """A fresh venv with a real (non-editable) install of this checkout; it reuses the running
    interpreter's packages (torch, flwr) through a .pth line instead of downloading them. That
    line is a plain path, so the .pth files in that folder (an editable featdiff's among them)
    are not processed, and the installed featdiff, in the venv's own site-packages, comes first.
    The build runs on a copy of the sources: no build/ or *.egg-info in the repository. Flower's
    commands get wrappers in the venv's bin, so the SuperLink, the SuperNodes and the app
    processes they start by name all run the venv's Python. Returns the venv's site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=STARTUP_S)
    python = venv / "bin" / "python"
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(subprocess.run([python, "-c", query], env=clean_env(), capture_output=True, text=True, check=True).stdout.strip())
    shared = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "running-interpreter.pth").write_text("".join(f"{path}\n" for path in shared))
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed"]
    if importlib.util.find_spec("setuptools") is not None:
        pip += ["--no-build-isolation", "--no-index"]  # build with this setuptools, offline; else pip fetches one
    subprocess.run([*pip, "--prefix", str(venv), str(source)], env=clean_env(), cwd=scratch, check=True, timeout=RUN_S)
    for entry in metadata.distribution("flwr").entry_points.select(group="console_scripts"):
        script = venv / "bin" / entry.name
        script.write_text(f"#!{python}\nimport sys\nfrom {entry.module} import {entry.attr}\nsys.exit({entry.attr}())\n")
        script.chmod(0o755)
    return site_packages


def start(command: list, log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Kill the process and what it started in its session (a SuperNode's SuperExec and ClientApps)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def federation(tmp_path) -> Iterator[tuple[str, list[subprocess.Popen], dict, Path, Path]]:
    """A non-editable featdiff in a fresh venv; a SuperLink with TLS and one SuperNode per
    partition on localhost, run from that venv in a folder outside the repository, ready when the
    SuperLink has activated every node; all stopped afterwards. Yields (address, [SuperLink,
    SuperNodes], environment, working folder, CA certificate)."""
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    site_packages = install_non_editable(venv, tmp_path)
    env = clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", FLWR_HOME=str(tmp_path / "flwr-home"))
    where = [venv / "bin" / "python", "-c", "import featdiff; print(featdiff.__file__)"]
    imported = Path(subprocess.run(where, env=env, cwd=work, capture_output=True, text=True).stdout.strip())
    assert imported.is_relative_to(site_packages) and not imported.is_relative_to(PROJECT_ROOT), imported
    for command in ("featdiff", "flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp", "flwr"):
        assert shutil.which(command, path=env["PATH"]) == str(venv / "bin" / command), command
    tls = certificates(tmp_path)
    port = free_port()
    superlink = [venv / "bin" / "flower-superlink", "--port", str(port), "--disable-runtime-dependency-installation"]
    superlink += ["--ssl-ca-certfile", tls["ca"], "--ssl-certfile", tls["certificate"], "--ssl-keyfile", tls["key"]]
    processes = [start(superlink, tmp_path / "superlink.log", env, work)]
    try:
        wait_until(lambda: listening(port), STARTUP_S, f"SuperLink on port {port}", processes, tmp_path / "superlink.log")
        for partition in range(CLIENTS):
            command = [venv / "bin" / "flower-supernode", "--superlink", f"localhost:{port}", "--root-certificates", tls["ca"]]
            command += ["--port", str(free_port()), "--node-config", f"partition-id={partition} num-partitions={CLIENTS}"]
            processes.append(start(command, tmp_path / f"supernode-{partition}.log", env, work))
        activated = lambda: (tmp_path / "superlink.log").read_text().count("Activated node_id=") >= CLIENTS  # noqa: E731
        wait_until(activated, STARTUP_S, f"{CLIENTS} SuperNodes activated by the SuperLink", processes, tmp_path / "superlink.log")
        yield f"localhost:{port}", processes, env, work, tls["ca"]
    finally:
        for process in processes:
            stop(process)


class LosingANode(InProcessGrid):
    """The in-process grid, except that partition `KILLED` answers nothing once the run has logged
    round 1: what its SuperNode, killed at that moment, does on a SuperLink."""

    def __init__(self, client_app, num_nodes: int, settings: dict) -> None:
        super().__init__(client_app, num_nodes, settings)
        self.folder = Path(str(settings["run-dir"]))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        if not round_logged(self.folder):
            return super().push_messages(messages)
        return super().push_messages([m for m in messages if self.contexts[m.metadata.dst_node_id].node_config["partition-id"] != KILLED])


@pytest.mark.slow
def test_an_installed_featdiff_on_a_superlink_gives_the_in_process_weights_and_survives_a_killed_supernode(
    make_config, tmp_path, federation
):
    """`featdiff federated CONFIG --superlink` from the installed package. The SuperNode of the
    last partition is killed as soon as round 1 is logged (its round-2 reply then never comes:
    the ClientApp process it would start for it takes seconds); the round timeout (generous: a
    round takes ~15 s on a loaded 2-core machine) ends round 2 with the others. The in-process
    grid losing the same node at the same point gives the same final weights, rounds and bytes."""
    address, processes, env, work, ca = federation
    config = make_config(
        clients=CLIENTS, clients_per_round=CLIENTS, rounds=2, head_rounds=0, warmup_steps=5, probe_every=10, round_timeout=45
    )
    out, log = tmp_path / "deployed", tmp_path / "deployed.log"
    command = [shutil.which("featdiff", path=env["PATH"]), "federated", str(config), "--out", str(out)]
    command += ["--superlink", address, "--root-certificates", str(ca)]
    deployed = start(command, log, env, work)
    try:
        wait_until(lambda: round_logged(out), RUN_S, "round 1 in the deployed run's metrics", [deployed], log)
        stop(processes[1 + KILLED])
        reference = tmp_path / "inprocess"  # run while the deployed round 2 waits out its timeout
        settings = prepared(config, reference)
        serve(LosingANode(make_client_app(settings), CLIENTS, settings), settings)
        assert deployed.wait(timeout=RUN_S) == 0, tail(log)
    finally:
        stop(deployed)
    results = json.loads((out / "results.json").read_text())
    assert [entry["round"] for entry in results["rounds"]] == [1, 2]
    assert results["rounds"][0]["missing"] == []
    assert results["rounds"][1]["missing"] == [KILLED], tail(tmp_path / "superlink.log")
    assert_same_run(reference, out)
