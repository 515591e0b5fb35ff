"""`featdiff federated` on bad input: one line naming the problem and the fix, exit 2, nothing written."""

import socket

import pytest

from featdiff.cli import main


def call(capsys, *args: str) -> tuple[int, str]:
    code = main(["federated", *args])
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, message: str, *fragments: str) -> None:
    assert code == 2
    lines = message.splitlines()
    assert len(lines) == 1 and lines[0].startswith("featdiff: error: ") and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def config_with(tmp_path, config_text):
    def write(**federated) -> str:
        path = tmp_path / "config.yaml"
        path.write_text(config_text(**federated))
        return str(path)

    return write


@pytest.mark.parametrize(
    ("federated", "fragments"),
    [
        ({"alpha": 0.0}, ("federated.alpha", "> 0")),
        ({"alpha": -1.0}, ("federated.alpha",)),
        ({"clients_per_round": 5}, ("federated.clients_per_round", "<= federated.clients = 4")),
        ({"clients": 2000, "clients_per_round": 8}, ("federated.clients", "2000", "lower federated.clients")),
        ({"clients": 100, "clients_per_round": 8, "min_client_records": 10}, ("federated.clients", "1000 records")),
        ({"features": "/nonexistent/features.safetensors"}, ("/nonexistent/features.safetensors", "featdiff encode")),
    ],
)
def test_bad_federations_are_refused_before_anything_is_written(capsys, tmp_path, config_with, federated, fragments):
    code, message = call(capsys, config_with(**federated), "--out", str(tmp_path / "run"))
    assert_refused(code, message, *fragments)
    assert not (tmp_path / "run").exists()


def test_an_unreachable_superlink_is_named_with_the_fix(capsys, tmp_path, config_with):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    code, message = call(capsys, config_with(), "--out", str(tmp_path / "run"), "--superlink", f"127.0.0.1:{port}")
    assert_refused(code, message, f"127.0.0.1:{port}", "flower-superlink", "--superlink")
    assert not (tmp_path / "run").exists()


def test_an_existing_folder_is_never_overwritten_and_a_finished_run_not_resumed(capsys, tmp_path, config_with):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    code, message = call(capsys, config_with(), "--out", str(tmp_path / "run"))
    assert_refused(code, message, "already exists", "--resume")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
    code, message = call(capsys, config_with(rounds=1, head_rounds=0), "--out", str(tmp_path / "done"))
    assert code == 0 and (tmp_path / "done" / "results.json").is_file()
    code, message = call(capsys, "--resume", str(tmp_path / "done"))
    assert_refused(code, message, "already complete")
