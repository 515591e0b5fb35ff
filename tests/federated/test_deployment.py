"""The same apps on Flower's simulation engine and on a real SuperLink with three SuperNodes on
127.0.0.1 (plain HTTP: tests only): the same final weights as the in-process grid, and a
SuperNode killed mid-run does not stop training."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from featdiff.config import load_config
from featdiff.federated.launch import run_here, settings_for
from featdiff.runs import Run

BIN = Path(sys.executable).parent
CLIENTS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def start(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A SuperLink and one SuperNode per partition, all on 127.0.0.1, shared by this module's tests
    (the kill test, last, stops one); all stopped afterwards."""
    tmp_path = tmp_path_factory.mktemp("deployment")
    env = os.environ | {"FLWR_HOME": str(tmp_path / "flwr-home"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    port = free_port()
    processes = [
        start(
            [str(BIN / "flower-superlink"), "--insecure", "--port", str(port), "--disable-runtime-dependency-installation"],
            tmp_path / "superlink.log",
            env,
        )
    ]
    wait_for_port(port)
    for partition in range(CLIENTS):
        command = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(free_port())]
        command += ["--node-config", f"partition-id={partition} num-partitions={CLIENTS}"]
        processes.append(start(command, tmp_path / f"supernode-{partition}.log", env))
    time.sleep(3)
    yield f"127.0.0.1:{port}", processes, env
    for process in processes:
        stop(process)


def deploy(config: Path, out: Path, address: str, env: dict) -> subprocess.Popen:
    command = [str(BIN / "featdiff"), "federated", str(config), "--out", str(out), "--superlink", address]
    return subprocess.Popen(command, stdout=(out.parent / f"{out.name}.log").open("w"), stderr=subprocess.STDOUT, env=env)


def prepared(config: Path, folder: Path) -> dict:
    Run.create(folder, load_config(config))
    return settings_for(folder, resume=False)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "denoiser.safetensors")


def assert_same_run(expected: Path, got: Path) -> None:
    """Bit-identical final weights: replies are averaged in partition order whatever order they
    arrive in, and every random stream is named by (seed, round, client)."""
    first, second = weights(expected), weights(got)
    assert all(torch.equal(first[name], second[name]) for name in first)
    sent = [json.loads((folder / "results.json").read_text())["rounds"][0]["up_bytes"] for folder in (expected, got)]
    assert sent[0] == sent[1]  # the serialised content, whatever the transport


def test_the_simulation_engine_gives_the_in_process_weights(make_config, tmp_path):
    config = make_config(clients=CLIENTS, clients_per_round=CLIENTS, rounds=2, head_rounds=0, warmup_steps=5, probe_every=10)
    run_here(prepared(config, tmp_path / "inprocess"), CLIENTS, "inprocess")
    run_here(prepared(config, tmp_path / "simulation"), CLIENTS, "simulation")
    assert_same_run(tmp_path / "inprocess", tmp_path / "simulation")


def test_a_superlink_with_three_supernodes_gives_the_in_process_weights(make_config, tmp_path, federation):
    address, _, env = federation
    config = make_config(clients=CLIENTS, clients_per_round=CLIENTS, rounds=1, head_rounds=0, warmup_steps=5, probe_every=10)
    deployed = deploy(config, tmp_path / "deployed", address, env)
    run_here(prepared(config, tmp_path / "inprocess"), CLIENTS, "inprocess")
    assert deployed.wait(timeout=400) == 0, (tmp_path / "deployed.log").read_text()[-3000:]
    assert_same_run(tmp_path / "inprocess", tmp_path / "deployed")


def test_a_killed_supernode_does_not_stop_training(make_config, tmp_path, federation):
    address, processes, env = federation
    config = make_config(
        clients=CLIENTS, clients_per_round=CLIENTS, rounds=2, head_rounds=0, warmup_steps=5, probe_every=10, round_timeout=15
    )
    out = tmp_path / "run"
    deployed = deploy(config, out, address, env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and '"stage": "round"' in metrics.read_text()):
        assert deployed.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.5)
    stop(processes[-1])  # the SuperNode of partition 2, after round 1 (this test runs last: the module's federation loses it)
    assert deployed.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [entry["round"] for entry in results["rounds"]] == [1, 2]
    assert results["rounds"][0]["missing"] == []
    assert results["rounds"][-1]["missing"] == [CLIENTS - 1]
