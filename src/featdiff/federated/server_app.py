"""The Flower ServerApp: opens (or resumes) the run folder and runs the config's strategy
(featdiff.federated.strategies) on the grid the runtime gives it, the simulation engine's or a
SuperLink's."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from featdiff.federated.federation import Federation
from featdiff.federated.strategies import strategy_for
from featdiff.federated.task import run_config
from featdiff.runs import CONFIG_FILE, Run


def serve(grid: Grid, settings: dict) -> dict:
    """Run keys: `config` (the YAML the clients read too), `run-dir` (a new folder, one the CLI
    prepared with only its config.yaml, or with `resume` the one to continue)."""
    folder = Path(str(settings["run-dir"]))
    if bool(settings.get("resume", False)):
        run = Run.resume(folder)
    elif (folder / CONFIG_FILE).is_file() and not (folder / "stages").exists():
        run = Run.open(folder)
    else:
        run = Run.create(folder, run_config(str(settings["config"])))
    if run.config.compute.threads is not None:
        torch.set_num_threads(run.config.compute.threads)
    federated = run.config.federated
    federation = Federation(grid, round_timeout=federated.round_timeout, stage_timeout=federated.stage_timeout)
    return strategy_for(federated.algorithm)(run, federation).execute()


def make_server_app(settings: dict[str, str | bool] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, {**(settings or {}), **context.run_config})

    return app


app = make_server_app()
"""What `flwr run` loads (featdiff/federated/flower_app/pyproject.toml): settings come from the run config."""
