"""Running the Flower apps: in this process, on Flower's simulation engine, or against a SuperLink.

All three run the same ServerApp and ClientApp; they differ only in the transport. The CLI
prepares the run folder first (config.yaml, so every client reads the resolved config), checks
what can be checked without training (the features file, the partition, the SuperLink's
address), and only then starts anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Literal

from featdiff.config import RunConfig
from featdiff.errors import UserError

Engine = Literal["inprocess", "simulation"]
APP_FOLDER = "flower_app"
"""The Flower app project (a pyproject.toml naming the two apps) that `flwr run` ships: package
data of featdiff.federated, so an installed featdiff carries it."""


def preflight(config: RunConfig) -> None:
    """Refuse what would fail later, before the run folder exists: an unreadable features file, a
    split the clients cannot have, and (private runs) a δ or budget some client's plan cannot
    meet at its own N, naming that client (clients are checked from the smallest up)."""
    from featdiff.config import private_training
    from featdiff.federated.task import encoded_features, partition

    features = encoded_features(config.federated.features)
    fed = config.federated
    parts = partition(fed.features, fed.clients, fed.alpha, config.seed, fed.min_client_records)
    if not private_training(config):
        return
    from featdiff.federated.private_client import check_client_budget

    for client in sorted(range(len(parts)), key=lambda p: (len(parts[p]), p)):
        size = len(parts[client])
        try:
            check_client_budget(config, size, features["train_features"].shape[1])
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

    with private_ray_dir() as ray_dir, without_run_simulation_deprecation():
        run_simulation(
            make_server_app(settings),
            make_client_app(settings),
            num_supernodes=clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"_temp_dir": str(ray_dir)}},
        )


RAY_CLEANUP_S = 30
"""How long the removal of Ray's temporary folder may retry before it says so and gives up."""


@contextmanager
def private_ray_dir() -> Iterator[Path]:
    """A temporary folder for Ray's session (sockets, logs, spilled objects), removed when the
    run ends: Ray's default, /tmp/ray/session_*, is never cleaned up. The simulation engine
    shuts Ray down before `run_simulation` returns, but Ray does not wait for every process it
    killed, so a late log line can still land there: the removal retries for a while."""
    folder = Path(tempfile.mkdtemp(prefix="featdiff-ray-"))
    try:
        yield folder
    finally:
        deadline = time.monotonic() + RAY_CLEANUP_S
        while folder.exists():
            try:
                shutil.rmtree(folder)
            except OSError as error:
                if time.monotonic() > deadline:
                    print(f"featdiff: could not remove Ray's temporary folder {folder} ({error}); delete it by hand", file=sys.stderr)
                    break
                time.sleep(0.2)


RUN_SIMULATION_DEPRECATION = "The `run_simulation` function is deprecated"


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RUN_SIMULATION_DEPRECATION not in record.getMessage()


@contextmanager
def without_run_simulation_deprecation() -> Iterator[None]:
    """Drop exactly Flower's deprecation warning of `run_simulation`, nothing else. Flower 1.42's
    replacement, `flwr run` with a local federation, starts a detached SuperLink daemon (fixed
    port 39091, state under ~/.flwr) that outlives the command and loads the apps from a FAB in
    other processes; `--engine simulation` exists to run these very app objects on the Ray
    engine in this process, which only `run_simulation` does."""
    logger, dropper = logging.getLogger("flwr"), _DropRunSimulationDeprecation()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


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


def check_superlink(address: str, *, root_certificates: str | None) -> None:
    """Reachable, and with `root_certificates` a TLS handshake that this CA verifies for the
    address's host name. Checked before `flwr run`, which otherwise waits for ever on a SuperLink
    it cannot talk to. (The SuperLink's own ServerApp process, which connects to it on 127.0.0.1,
    is not checked from here: see the README on the certificate's names.)"""
    check_reachable(address)
    if root_certificates is None:
        return
    if not Path(root_certificates).is_file():
        raise UserError(f"--root-certificates {root_certificates}: no such file; pass the CA certificate that signed the SuperLink's")
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        context = ssl.create_default_context(cafile=root_certificates)
    except ssl.SSLError as error:
        reason = f"no PEM certificate in it ({error.reason})"
        raise UserError(f"--root-certificates {root_certificates}: {reason}; pass the CA's ca.crt") from None
    try:
        with socket.create_connection((host, int(port)), timeout=10) as connection, context.wrap_socket(connection, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as error:
        raise UserError(
            f"the SuperLink at {address} presents a certificate that {root_certificates} does not verify ({error.verify_message}): "
            f"pass the CA that signed it, or give the SuperLink a certificate signed by it that names {host} and 127.0.0.1"
        ) from None
    except (ssl.SSLError, OSError) as error:
        raise UserError(
            f"no TLS handshake with the SuperLink at {address} ({error}): start it with --ssl-ca-certfile, --ssl-certfile and "
            "--ssl-keyfile (or, for a local test on an --insecure SuperLink, leave out --root-certificates)"
        ) from None


def run_deployed(settings: dict, address: str, root_certificates: str | None) -> None:
    """`flwr run` of the packaged app against the SuperLink at `address`, in a private Flower home
    (the user's ~/.flwr is left alone); TLS with `root_certificates`, plain HTTP otherwise (tests)."""
    check_superlink(address, root_certificates=root_certificates)
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    if flwr is None:
        raise UserError("the `flwr` command is not installed: pip install 'flwr[simulation]' after torch")
    security = f"root-certificates = {toml_value(str(Path(root_certificates).resolve()))}" if root_certificates else "insecure = true"
    with tempfile.TemporaryDirectory(prefix="featdiff-flwr-") as home:
        (Path(home) / "config.toml").write_text(
            f'[superlink]\ndefault = "featdiff"\n\n[superlink.featdiff]\naddress = "{address}"\n{security}\n'
        )
        app = write_app_project(Path(home) / "app")
        run_config = " ".join(f"{key}={toml_value(value)}" for key, value in settings.items())
        env = os.environ | {"FLWR_HOME": home, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        result = subprocess.run([flwr, "run", str(app), "featdiff", "--run-config", run_config, "--stream"], env=env, check=False)
    if result.returncode != 0:
        raise UserError(f"`flwr run` against {address} failed (exit {result.returncode}); see its output above")
    folder = Path(str(settings["run-dir"]))
    if not (folder / "results.json").is_file():
        raise UserError(f"the ServerApp stopped before finishing (its log is above); fix the cause, then continue with --resume {folder}")


def write_app_project(folder: Path) -> Path:
    """Copy the Flower app project that ships in the package into `folder` (new) and return it.
    `flwr run` takes a directory; the installed package may be read-only or zipped, so it gets a
    copy of its own rather than the package's folder."""
    project = resources.files("featdiff.federated").joinpath(APP_FOLDER).joinpath("pyproject.toml")
    if not project.is_file():
        raise UserError(f"this featdiff install lacks its Flower app project ({project}): reinstall featdiff (pip install .)")
    folder.mkdir()
    (folder / "pyproject.toml").write_bytes(project.read_bytes())
    return folder


def toml_value(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else f"'{value}'"
