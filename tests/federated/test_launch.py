"""The launchers' parts that need no federation: the packaged Flower app project, the SuperLink's
TLS checked before `flwr run` (which would wait for ever), and the one Flower warning the
simulation engine drops."""

import logging
import shutil
import socket
import ssl
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import import_module
from pathlib import Path

import pytest
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from tls_certificates import certificates

from featdiff.errors import UserError
from featdiff.federated import launch
from featdiff.federated.launch import check_superlink, settings_for, without_run_simulation_deprecation, write_app_project


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


def test_an_install_without_the_app_project_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "APP_FOLDER", "no_such_app")
    with pytest.raises(UserError, match=r"lacks its Flower app project .*no_such_app.*reinstall featdiff"):
        launch.write_app_project(tmp_path / "app")
    assert not (tmp_path / "app").exists()


@contextmanager
def listener(certificates: dict[str, Path] | None) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every connection until it is closed: a TLS handshake
    with `certificates`' server certificate, or without them a plain-HTTP reply (what an
    --insecure SuperLink speaks)."""
    server = socket.create_server(("127.0.0.1", 0))
    context, closing = None, threading.Event()
    if certificates is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates["certificate"], certificates["key"])

    def answer() -> None:
        while not closing.is_set():
            connection, _ = server.accept()
            with connection, suppress(OSError):
                if context is None:
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                else:
                    with context.wrap_socket(connection, server_side=True):
                        pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"localhost:{server.getsockname()[1]}"
    finally:
        closing.set()
        with suppress(OSError), socket.create_connection(server.getsockname(), timeout=1):
            pass  # wakes the thread's accept, which then sees `closing`
        thread.join(timeout=60)
        server.close()


def test_a_superlink_whose_certificate_the_ca_verifies_passes(tmp_path):
    tls = certificates(tmp_path)
    with listener(tls) as address:
        check_superlink(address, root_certificates=str(tls["ca"]))


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing", ("--root-certificates", "ca.crt: no such file")),
        ("not a certificate", ("server.key: no PEM certificate in it",)),
        ("another CA", ("does not verify", "names localhost and 127.0.0.1")),
        ("plain HTTP", ("no TLS handshake", "--ssl-certfile")),
    ],
)
def test_a_superlink_that_tls_cannot_reach_is_named_with_the_fix(tmp_path, case, fragments):
    tls, other = certificates(tmp_path), certificates(tmp_path, name="other-")
    ca = {"missing": tmp_path / "nowhere" / "ca.crt", "not a certificate": tls["key"], "another CA": other["ca"], "plain HTTP": tls["ca"]}
    with listener(None if case == "plain HTTP" else tls) as address, pytest.raises(UserError) as refused:
        check_superlink(address, root_certificates=str(ca[case]))
    message = str(refused.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message


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


def test_rays_folder_is_removed_even_while_a_late_writer_holds_it(monkeypatch):
    """Ray does not wait for every process it killed: the removal retries until it succeeds."""
    failures, remove = [OSError(39, "Directory not empty")] * 2, shutil.rmtree

    def racing_rmtree(path, *args, **kwargs):
        if failures:
            raise failures.pop()
        remove(path, *args, **kwargs)

    monkeypatch.setattr(launch.shutil, "rmtree", racing_rmtree)
    with launch.private_ray_dir() as folder:
        (folder / "session_latest").write_text("a Ray session")
    assert failures == [] and not folder.exists()


def test_a_folder_that_cannot_be_removed_is_named_not_raised(monkeypatch, capsys):
    monkeypatch.setattr(launch, "RAY_CLEANUP_S", 0)

    def refusing_rmtree(path, *args, **kwargs):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(launch.shutil, "rmtree", refusing_rmtree)
    with launch.private_ray_dir() as folder:
        pass
    try:
        message = capsys.readouterr().err.strip()
        assert message.splitlines() == [message] and str(folder) in message and "Permission denied" in message, message
    finally:
        folder.rmdir()
