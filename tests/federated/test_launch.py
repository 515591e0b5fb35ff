"""The launchers' parts that need no federation: the packaged Flower app project, TLS input, and
the one Flower warning the simulation engine drops."""

import logging
import socket
import tomllib
from importlib import import_module

import pytest
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from featdiff.errors import UserError
from featdiff.federated.launch import run_deployed, settings_for, without_run_simulation_deprecation, write_app_project


def test_the_packaged_app_project_names_the_apps_and_declares_every_setting(tmp_path):
    project = tomllib.loads((write_app_project(tmp_path / "app") / "pyproject.toml").read_text())
    components = project["tool"]["flwr"]["app"]["components"]
    loaded = {}
    for role, reference in components.items():
        module, _, name = reference.partition(":")
        loaded[role] = getattr(import_module(module), name)
    assert isinstance(loaded["serverapp"], ServerApp) and isinstance(loaded["clientapp"], ClientApp)
    assert project["project"]["dependencies"] == []  # the runtime must reuse this environment's torch
    assert set(project["tool"]["flwr"]["app"]["config"]) == set(settings_for(tmp_path / "run", resume=False))


def test_a_missing_ca_certificate_is_named_before_flwr_runs(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(UserError, match=r"--root-certificates .*ca\.crt: no such file"):
            run_deployed(settings_for(tmp_path / "run", resume=False), address, str(tmp_path / "ca.crt"))


def test_only_flowers_deprecation_of_run_simulation_is_dropped(caplog):
    flower = logging.getLogger("flwr")
    with caplog.at_level(logging.WARNING, logger="flwr"), without_run_simulation_deprecation():
        flower.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated and will be removed")
        flower.warning("DEPRECATED FEATURE: %s", "start_simulation() is deprecated")
        flower.warning("a node did not answer")
    flower.warning("DEPRECATED FEATURE: %s", "The `run_simulation` function is deprecated and will be removed")
    messages = [record.getMessage() for record in caplog.records]
    assert messages[:2] == ["DEPRECATED FEATURE: start_simulation() is deprecated", "a node did not answer"]
    assert len(messages) == 3 and "run_simulation" in messages[2]  # outside the block, Flower's logging is untouched
