"""`featdiff federated`: on bad input one line naming the problem and the fix, exit 2, nothing
written; a failing round ends the run in one line and leaves it resumable; what a run prints."""

import json
import socket

import pytest
import torch
from raising_clients import RaisingClients, in_round

import featdiff.federated.client_app
import featdiff.federated.launch
from featdiff.cli import main
from featdiff.federated.task import partition, run_config


def call(capsys, *args: str) -> tuple[int, str]:
    code = main(["federated", *args])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A config's compute.threads sets torch's threads in this process: give them back after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


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
    code = main(["federated", "--resume", str(tmp_path / "done")])
    printed = capsys.readouterr()
    assert printed.out == ""
    assert_refused(code, printed.err.strip(), "already complete")


def test_a_run_prints_its_folder_once_one_bar_per_stage_and_a_results_table(capsys, tmp_path, config_with):
    code = main(["federated", config_with(rounds=2, head_rounds=1), "--out", str(tmp_path / "run")])
    printed = capsys.readouterr()
    assert code == 0
    assert printed.out.count(str(tmp_path / "run")) == 2  # "run folder X" once, and the results file under it
    assert "| fedddpm: head on pseudo-features |" in printed.out and "| fedddpm: refined by FedAvg |" in printed.out
    for inner in ("client:", "denoiser:", "head:", "sampling"):  # clients' and the server's inner loops are silent
        assert inner not in printed.err, printed.err
    assert "fedddpm rounds" in printed.err and "refine rounds" in printed.err


def test_the_old_spellings_of_fedddpm_are_read_as_the_new_ones(capsys, tmp_path, config_with):
    code = main(["federated", config_with(algorithm="feddpm_plus", rounds=1, head_rounds=0), "--out", str(tmp_path / "run")])
    capsys.readouterr()
    assert code == 0 and json.loads((tmp_path / "run" / "results.json").read_text())["algorithm"] == "fedddpm_plus"
    assert "algorithm: fedddpm_plus" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_round_where_every_client_fails_ends_the_run_in_one_line_and_resume_finishes_it(capsys, tmp_path, config_with, monkeypatch):
    make_client_app = featdiff.federated.client_app.make_client_app
    monkeypatch.setattr(
        featdiff.federated.client_app, "make_client_app", lambda settings: RaisingClients(make_client_app(settings), in_round("round-2"))
    )
    folder = tmp_path / "run"
    code, message = call(capsys, config_with(head_rounds=0), "--out", str(folder))
    assert code == 2 and message.count("featdiff: error: ") == 1 and "Traceback" not in message, message
    # The rounds' bar (stderr, left in place when stderr is no terminal) closes before the one line of error.
    assert_refused(code, message.splitlines()[-1], "round 2: no client succeeded", "disk full on client", f"--resume {folder}")
    checkpoint = torch.load(folder / "checkpoints" / "rounds.pt", weights_only=False)
    assert [entry["round"] for entry in checkpoint["history"]] == [1]
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(line["stage"], line.get("round", line.get("at"))) for line in logged] == [("round", 1), ("failed", "round 2")]
    assert len(logged[-1]["errors"]) == 3 and not (folder / "results.json").exists()
    monkeypatch.setattr(featdiff.federated.client_app, "make_client_app", make_client_app)  # the clients are mended
    code = main(["federated", "--resume", str(folder)])
    capsys.readouterr()
    results = json.loads((folder / "results.json").read_text())
    assert code == 0 and [entry["round"] for entry in results["rounds"]] == [1, 2, 3, 4]


def test_a_private_federation_is_checked_per_client_before_the_run_folder_exists(capsys, tmp_path, config_with):
    path = config_with()
    config = run_config(path)
    fed = config.federated
    sizes = [len(part) for part in partition(fed.features, fed.clients, fed.alpha, config.seed, fed.min_client_records)]
    delta = (1 / min(sizes) + 1 / max(sizes)) / 2  # below 1/N of the smallest client, not of the largest
    cited = min((p for p in range(len(sizes)) if delta >= 1 / sizes[p]), key=lambda p: (sizes[p], p))  # the smallest that fails
    with open(path) as file:
        text = file.read().replace("delta: 0.0001", f"delta: {delta}\n  epsilon: 10.0\n  accountant: clt")
    with open(path, "w") as file:
        file.write(text)
    code, message = call(capsys, path, "--out", str(tmp_path / "run"))
    assert_refused(code, message, f"federated client {cited} holds N = {sizes[cited]} records", "privacy.delta")
    assert not (tmp_path / "run").exists()


def test_a_failure_in_a_serverapp_that_ran_elsewhere_is_reported_in_its_one_line(capsys, tmp_path, config_with, monkeypatch):
    """The simulation engine runs the ServerApp where its error does not reach the CLI: the CLI
    reads the failure the server recorded."""
    run_here = featdiff.federated.launch.run_here

    def swallowing(settings, clients, engine):
        try:
            run_here(settings, clients, engine)
        except Exception:  # noqa: BLE001 - what an engine that logs the ServerApp's exception does
            pass

    make_client_app = featdiff.federated.client_app.make_client_app
    monkeypatch.setattr(
        featdiff.federated.client_app, "make_client_app", lambda settings: RaisingClients(make_client_app(settings), in_round("round-1"))
    )
    monkeypatch.setattr(featdiff.federated.launch, "run_here", swallowing)
    code, message = call(capsys, config_with(rounds=2, head_rounds=0), "--out", str(tmp_path / "run"))
    assert_refused(code, message.splitlines()[-1], "round 1: no client succeeded", "disk full on client", "--resume")
