"""Running the Flower apps: in this process, on Flower's simulation engine, or against a SuperLink.

All three run the same ServerApp and ClientApp; they differ only in the transport. The CLI
prepares the run folder first (config.yaml, so every client reads the resolved config), checks
what can be checked without training (the features file, the partition, the SuperLink's
address), and only then starts anything.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from featdiff.config import RunConfig
from featdiff.errors import UserError

Engine = Literal["inprocess", "simulation"]
APP_DIR = Path(__file__).resolve().parents[3] / "flower"
"""The Flower app project (pyproject.toml naming the two apps) that `flwr run` ships."""


def preflight(config: RunConfig) -> None:
    """Refuse what would fail later, before the run folder exists: an unreadable features file, a
    split the clients cannot have, and (private runs) a δ or budget some client's plan cannot
    meet at its own N, naming that client (clients are checked from the smallest up)."""
    from featdiff.federated.task import encoded_features, partition, private

    features = encoded_features(config.federated.features)
    fed = config.federated
    parts = partition(fed.features, fed.clients, fed.alpha, config.seed, fed.min_client_records)
    if not private(config):
        return
    from featdiff.federated.private_client import client_plan

    for client in sorted(range(len(parts)), key=lambda p: (len(parts[p]), p)):
        size = len(parts[client])
        try:
            client_plan(config, size, features["train_features"].shape[1])
        except UserError as error:
            raise UserError(f"federated client {client} holds N = {size} records (each client is planned at its own N): {error}") from None


def settings_for(folder: Path, resume: bool) -> dict[str, str | bool]:
    return {"config": str(folder.resolve() / "config.yaml"), "run-dir": str(folder.resolve()), "resume": resume}


def run_here(settings: dict, clients: int, engine: Engine) -> None:
    from featdiff.federated.client_app import make_client_app
    from featdiff.federated.server_app import make_server_app, serve

    if engine == "inprocess":
        from featdiff.federated.local_grid import InProcessGrid

        serve(InProcessGrid(make_client_app(settings), clients, settings), settings)
        return
    from flwr.simulation import run_simulation

    run_simulation(
        make_server_app(settings),
        make_client_app(settings),
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


def check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--superlink {address!r} is not HOST:PORT: pass the SuperLink's address, e.g. 127.0.0.1:9093")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            return
    except OSError as error:
        raise UserError(
            f"cannot reach the SuperLink at {address} ({error.strerror or error}): start it there "
            "(flower-superlink --ssl-certfile … --ssl-keyfile …, or --insecure for a local test) or pass its address with --superlink"
        ) from None


def run_deployed(settings: dict, address: str, root_certificates: str | None) -> None:
    """`flwr run` of the app against the SuperLink at `address`, in a private Flower home (the
    user's ~/.flwr is left alone); TLS with `root_certificates`, plain HTTP otherwise (tests)."""
    check_reachable(address)
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    if flwr is None:
        raise UserError("the `flwr` command is not installed: pip install 'flwr[simulation]' after torch")
    security = f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true"
    with tempfile.TemporaryDirectory(prefix="featdiff-flwr-") as home:
        (Path(home) / "config.toml").write_text(
            f'[superlink]\ndefault = "featdiff"\n\n[superlink.featdiff]\naddress = "{address}"\n{security}\n'
        )
        run_config = " ".join(f"{key}={toml_value(value)}" for key, value in settings.items())
        env = os.environ | {"FLWR_HOME": home, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        result = subprocess.run([flwr, "run", str(APP_DIR), "featdiff", "--run-config", run_config, "--stream"], env=env, check=False)
    if result.returncode != 0:
        raise UserError(f"`flwr run` against {address} failed (exit {result.returncode}); see its output above")
    folder = Path(str(settings["run-dir"]))
    if not (folder / "results.json").is_file():
        raise UserError(f"the ServerApp stopped before finishing (its log is above); fix the cause, then continue with --resume {folder}")


def toml_value(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else f"'{value}'"
