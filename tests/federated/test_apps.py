"""The Flower apps end to end on the in-process grid: what each strategy does that the others do
not, bytes, drop-outs and failing clients, resume, and the numbers the strategies reproduce."""

import json

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from raising_clients import RaisingClients, in_round
from safetensors.torch import load_file

from featdiff.errors import UserError
from featdiff.federated.client_app import make_client_app
from featdiff.federated.federation import round_sample
from featdiff.federated.local_grid import InProcessGrid
from featdiff.federated.server_app import serve
from featdiff.federated.task import new_denoiser, run_config
from featdiff.io import strict_json


def run(config_path, folder, resume=False, grid_type=InProcessGrid, fails=None):
    settings = {"config": str(config_path), "run-dir": str(folder), "resume": resume}
    clients = run_config(str(config_path)).federated.clients
    app = make_client_app(settings) if fails is None else RaisingClients(make_client_app(settings), fails)
    return serve(grid_type(app, clients, settings), settings)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "denoiser.safetensors")


def logged(folder, stage: str) -> list[dict]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["stage"] == stage]


def parameter_bytes(config_path) -> int:
    config = run_config(str(config_path))
    return 4 * sum(p.numel() for p in new_denoiser(16, 5, config).parameters())


@pytest.mark.parametrize("algorithm", ["fedavg", "fedddpm", "fedddpm_plus", "progressive"])
def test_denoiser_algorithms_count_the_bytes_of_every_message(algorithm, make_config, tmp_path):
    config = make_config(algorithm=algorithm)
    results = run(config, tmp_path / "run")
    model_bytes = parameter_bytes(config)
    for entry in results["rounds"]:
        answered = len(entry["sampled"]) - len(entry["missing"])
        assert answered * model_bytes <= entry["up_bytes"] <= answered * (model_bytes + 16384)
        assert len(entry["sampled"]) * model_bytes <= entry["down_bytes"]
        assert entry["many_row_norm"] > 0 and entry["errors"] == {}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["algorithm"] == algorithm and saved["rounds"] == json.loads(strict_json(results["rounds"]))


def test_fedddpm_as_published_corrects_every_aggregate_and_fedavg_does_not(make_config, tmp_path):
    plain = run(make_config("plain", algorithm="fedavg"), tmp_path / "fedavg")
    corrected = run(make_config("corrected", algorithm="fedddpm", correction="fixed"), tmp_path / "fedddpm")
    assert all("corrected_holdout_loss" not in entry for entry in plain["rounds"])
    assert all(entry["corrected_holdout_loss"] != entry["holdout_loss"] for entry in corrected["rounds"])
    # Round 1 aggregates the same client updates of the same start; only the correction differs after it.
    assert plain["rounds"][0]["holdout_loss"] == corrected["rounds"][0]["holdout_loss"]
    assert plain["rounds"][1]["holdout_loss"] != corrected["rounds"][1]["holdout_loss"]
    theirs, ours = weights(tmp_path / "fedavg"), weights(tmp_path / "fedddpm")
    assert any(not torch.equal(theirs[name], ours[name]) for name in theirs)


def test_fedddpm_plus_stops_after_its_one_finetune(make_config, tmp_path):
    results = run(make_config(algorithm="fedddpm_plus", quick_test_threshold=10.0, quick_test_patience=1, rounds=6), tmp_path / "run")
    assert [entry["round"] for entry in results["rounds"]] == [1, 2]  # round 2 is the first with an improvement to test
    assert "finetune_steps" not in results["rounds"][0] and results["rounds"][1]["finetune_steps"] > 0
    assert results["rounds"][1]["corrected_holdout_loss"] <= results["rounds"][1]["holdout_loss"]  # the fine-tune keeps its best


def test_fedddpm_plus_is_fedavg_while_learning_is_fast(make_config, tmp_path):
    never_slow = run(make_config("plus", algorithm="fedddpm_plus", quick_test_threshold=0.0), tmp_path / "plus")
    plain = run(make_config("plain", algorithm="fedavg"), tmp_path / "fedavg")
    assert len(never_slow["rounds"]) == 4 and all("finetune_steps" not in entry for entry in never_slow["rounds"])
    assert [e["holdout_loss"] for e in never_slow["rounds"]] == [e["holdout_loss"] for e in plain["rounds"]]


BAD_BANK = {"warmup_steps": 0, "rounds": 6, "local_steps": 20}
"""Untrained warm-up denoisers: an auxiliary bank far from the federation's statistics, which the
rounds' global model overtakes."""
GOOD_BANK = {"warmup_steps": 300, "rounds": 2, "local_steps": 1}
"""Well-trained warm-up denoisers and a global model that has taken two local steps: a bank far
better than anything the model can offer."""


def test_a_bank_worse_than_the_model_corrects_nothing_where_a_fixed_correction_hurts(make_config, tmp_path):
    plain = run(make_config("plain", algorithm="fedavg", **BAD_BANK), tmp_path / "fedavg")
    scored = run(make_config("scored", algorithm="fedddpm", **BAD_BANK), tmp_path / "scored")
    fixed = run(make_config("fixed", algorithm="fedddpm", correction="fixed", **BAD_BANK), tmp_path / "fixed")
    assert all(entry["correction_steps"] == 0 and entry["model_frechet"] < entry["bank_frechet"] for entry in scored["rounds"])
    ours, theirs = weights(tmp_path / "scored"), weights(tmp_path / "fedavg")
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)  # no correction: FedAvg's run exactly
    assert scored["pseudo_frechet_test"] == plain["pseudo_frechet_test"]
    assert fixed["pseudo_frechet_test"] > plain["pseudo_frechet_test"]  # pulled towards the bad bank


def test_a_bank_better_than_the_model_corrects_it(make_config, tmp_path):
    results = run(make_config(algorithm="fedddpm", **GOOD_BANK), tmp_path / "run")
    assert all(0.3 < entry["correction_strength"] <= 1 and entry["correction_steps"] > 0 for entry in results["rounds"])
    assert all(entry["bank_frechet"] < entry["model_frechet"] for entry in results["rounds"])
    assert all(entry["correction_kept"] and entry["corrected_frechet"] < entry["model_frechet"] for entry in results["rounds"])


def test_a_correction_that_worsens_the_model_is_undone(make_config, tmp_path):
    """A good bank asks for a correction, but a server learning rate far too large wrecks the model
    in its steps: the corrected model scores worse, and the round goes on with the aggregated one."""
    plain = run(make_config("plain", algorithm="fedavg", **GOOD_BANK), tmp_path / "fedavg")
    wrecked = run(make_config("wrecked", algorithm="fedddpm", server_lr=10.0, **GOOD_BANK), tmp_path / "wrecked")
    for entry in wrecked["rounds"]:
        assert entry["correction_steps"] > 0 and not entry["correction_kept"]
        assert entry["corrected_frechet"] > entry["model_frechet"]
    ours, theirs = weights(tmp_path / "wrecked"), weights(tmp_path / "fedavg")
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)  # every correction undone: FedAvg's run exactly
    assert wrecked["pseudo_frechet_test"] == plain["pseudo_frechet_test"]


def test_the_progressive_bank_refreshes_from_a_model_that_overtook_it(make_config, tmp_path):
    results = run(make_config(algorithm="progressive", **BAD_BANK), tmp_path / "run")
    scored = [entry for entry in results["rounds"] if "refreshed" in entry]
    assert [entry["round"] for entry in scored] == [2, 4, 6]
    assert any(entry["refreshed"] and entry["replaced"] > 0 for entry in scored)
    refreshed = next(entry for entry in scored if entry["refreshed"])
    assert refreshed["candidate_frechet"] < refreshed["bank_frechet"] or refreshed["classes_refreshed"] > 0
    first, last = results["rounds"][0], results["rounds"][-1]
    assert last["bank_frechet"] < first["bank_frechet"] and last["bank_age"] < len(results["rounds"])


def test_the_progressive_bank_is_kept_when_the_model_is_worse(make_config, tmp_path):
    results = run(make_config(algorithm="progressive", **GOOD_BANK), tmp_path / "run")
    scored = [entry for entry in results["rounds"] if "refreshed" in entry]
    assert [entry["round"] for entry in scored] == [2]
    assert not any(entry["refreshed"] or entry["replaced"] for entry in scored)
    assert [entry["bank_age"] for entry in results["rounds"]] == [1.0, 2.0]
    assert len({entry["bank_frechet"] for entry in results["rounds"]}) == 1


def test_head_baselines_learn(make_config, tmp_path):
    head = run(make_config(algorithm="fedavg_head", head_rounds=5, head_lr=0.05), tmp_path / "head")
    creff = run(make_config(algorithm="creff", head_rounds=5, head_lr=0.05), tmp_path / "creff")
    assert head["head"]["acc"]["overall"] > 40 and creff["creff"]["acc"]["overall"] > 40  # 5 classes: chance is 20


def test_dropped_clients_are_reported_with_their_reason_and_the_rounds_finish(make_config, tmp_path):
    results = run(make_config(algorithm="fedddpm", drop_rate=0.34), tmp_path / "run")
    for entry in results["rounds"]:
        assert len(entry["missing"]) == 1 and set(entry["missing"]) <= set(entry["sampled"])
        assert list(entry["errors"]) == [str(entry["missing"][0])] and "simulated drop-out" in entry["errors"][str(entry["missing"][0])]
    clean = run(make_config("clean", algorithm="fedddpm"), tmp_path / "clean")
    assert results["rounds"][-1]["holdout_loss"] != clean["rounds"][-1]["holdout_loss"]


def test_a_client_that_raises_is_named_with_its_error_in_the_round_record(make_config, tmp_path):
    sampled, _ = round_sample(0, 1, [0, 1, 2, 3], 3, 0.0)
    results = run(make_config(algorithm="fedddpm"), tmp_path / "run", fails=in_round("round-1", {sampled[0]}))
    first = results["rounds"][0]
    assert first["missing"] == [sampled[0]] and f"disk full on client {sampled[0]}" in first["errors"][str(sampled[0])]
    assert logged(tmp_path / "run", "round")[0]["errors"] == first["errors"]
    assert [entry["round"] for entry in results["rounds"]] == [1, 2, 3, 4]
    assert all(entry["errors"] == {} for entry in results["rounds"][1:])


@pytest.mark.parametrize(("group", "stage"), [("setup", "setup"), ("warmup", "warm-up")])
def test_a_setup_or_warmup_without_replies_fails_in_one_line_with_the_clients_errors(make_config, tmp_path, group, stage):
    with pytest.raises(UserError) as refused:
        run(make_config(algorithm="fedddpm"), tmp_path / "run", fails=in_round(group))
    message = str(refused.value)
    assert message.startswith(f"{stage}:") and "\n" not in message and message.count("disk full on client") == 4


class KilledAfterTwoRounds(InProcessGrid):
    """A server that dies while its third round is out: the run folder holds rounds 1–2."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.group_id == "round-3":
            raise KeyboardInterrupt
        return super().send_and_receive(messages, timeout=timeout)


def test_resume_continues_a_killed_run_from_its_last_finished_round(make_config, tmp_path):
    config = make_config(algorithm="fedddpm")
    whole = run(config, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "killed", grid_type=KilledAfterTwoRounds)
    assert [line["round"] for line in logged(tmp_path / "killed", "round")] == [1, 2]
    timings = tmp_path / "killed" / "timings.json"
    timings.write_text(json.dumps(json.loads(timings.read_text()) | {"elapsed_s": 1000.0}))  # an earlier session of 1000 s
    resumed = run(config, tmp_path / "killed", resume=True)
    assert [entry["round"] for entry in resumed["rounds"]] == [1, 2, 3, 4]
    expected, got = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert resumed["pseudo_only"] == whole["pseudo_only"]
    assert resumed["wall_s"] > 1000.0 > whole["wall_s"]  # every session counts


def test_warmup_uploads_are_counted_as_models_or_as_features(make_config, tmp_path):
    as_features = run(make_config("features", warmup_upload="features"), tmp_path / "features")["warmup"]
    as_models = run(make_config("models", warmup_upload="model"), tmp_path / "models")["warmup"]
    feature_payload = 20 * 5 * (16 * 4 + 8)  # aux_per_class × classes rows of float32 features and int64 labels
    assert feature_payload <= as_features["up_bytes"] <= feature_payload + 4 * 16384
    model_bytes = parameter_bytes(make_config("size"))
    assert 4 * model_bytes <= as_models["up_bytes"] <= 4 * (model_bytes + 16384)


def test_a_reused_warmup_must_match(make_config, tmp_path):
    run(make_config("source", algorithm="fedavg"), tmp_path / "source")
    reused = run(make_config("reuse", algorithm="fedddpm", warmup_from=str(tmp_path / "source")), tmp_path / "reuse")
    assert reused["warmup"]["reused_from"] == str(tmp_path / "source")
    with pytest.raises(UserError, match="differs in aux_per_class"):
        run(make_config("other", algorithm="fedddpm", aux_per_class=10, warmup_from=str(tmp_path / "source")), tmp_path / "other")


def test_private_clients_claim_at_most_their_budget(make_config, tmp_path):
    config = make_config(algorithm="fedddpm", rounds=2, clients=2, clients_per_round=2)
    # The CLT accountant calibrates in milliseconds; the tight one is tested against PLD in tests/privacy.
    text = config.read_text().replace("delta: 0.0001", "delta: 0.0001\n  epsilon: 10.0\n  accountant: clt")
    config.write_text(text)
    results = run(config, tmp_path / "run")
    assert results["private"] and 9.0 <= results["warmup"]["max_client_epsilon"] <= 10.0
    assert results["reproducible_noise"] is False  # the clients' DP noise came from OS entropy
    assert "refined" not in results  # the head refinement touches real features without DP


def test_the_server_and_every_client_run_at_compute_threads(make_config, tmp_path):
    config = make_config(algorithm="fedavg_head", head_rounds=1)
    config.write_text(config.read_text() + "compute:\n  threads: 1\n")
    settings = {"config": str(config), "run-dir": str(tmp_path / "client"), "resume": False}
    grid = InProcessGrid(make_client_app(settings), 4, settings)
    query = Message(RecordDict({"config": ConfigRecord({"moments": False})}), 1001, "query.statistics", group_id="setup")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        [reply] = grid.send_and_receive([query])
        assert not reply.has_error() and torch.get_num_threads() == 1  # the client's handler
        torch.set_num_threads(2)
        run(config, tmp_path / "run")
        assert torch.get_num_threads() == 1  # the server
    finally:
        torch.set_num_threads(before)
