"""The Flower apps end to end on the in-process grid: every algorithm, bytes, drop-outs, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from featdiff.errors import UserError
from featdiff.federated.client_app import make_client_app
from featdiff.federated.local_grid import InProcessGrid
from featdiff.federated.server_app import serve
from featdiff.federated.task import new_denoiser, run_config


def run(config_path, folder, resume=False, grid_type=InProcessGrid):
    settings = {"config": str(config_path), "run-dir": str(folder), "resume": resume}
    clients = run_config(str(config_path)).federated.clients
    return serve(grid_type(make_client_app(settings), clients, settings), settings)


def parameter_bytes(config_path) -> int:
    config = run_config(str(config_path))
    return 4 * sum(p.numel() for p in new_denoiser(16, 5, config).parameters())


@pytest.mark.parametrize("algorithm", ["fedavg", "feddpm", "feddpm_plus", "progressive"])
def test_denoiser_algorithms_run_and_count_the_bytes_of_every_message(algorithm, make_config, tmp_path):
    config = make_config(algorithm=algorithm)
    results = run(config, tmp_path / "run")
    model_bytes = parameter_bytes(config)
    for entry in results["rounds"]:
        answered = len(entry["sampled"]) - len(entry["missing"])
        assert answered * model_bytes <= entry["up_bytes"] <= answered * (model_bytes + 16384)
        assert len(entry["sampled"]) * model_bytes <= entry["down_bytes"]
        assert entry["many_row_norm"] > 0
    assert 0 <= results["pseudo_only"]["acc"]["overall"] <= 100
    assert (tmp_path / "run" / "results.json").is_file()
    if algorithm == "feddpm_plus":
        finetuned = [entry for entry in results["rounds"] if "finetune_steps" in entry]
        assert len(finetuned) <= 1 and (not finetuned or finetuned[0] is results["rounds"][-1] or finetuned[0] == results["rounds"][-1])


def test_quick_test_stops_feddpm_plus_after_its_one_finetune(make_config, tmp_path):
    results = run(make_config(algorithm="feddpm_plus", quick_test_threshold=10.0, quick_test_patience=1, rounds=6), tmp_path / "run")
    assert len(results["rounds"]) == 2  # round 2 is the first with an improvement to test; it fine-tunes and stops
    assert results["rounds"][-1]["finetune_steps"] > 0


def test_head_baselines_learn(make_config, tmp_path):
    head = run(make_config(algorithm="fedavg_head", head_rounds=5, head_lr=0.05), tmp_path / "head")
    creff = run(make_config(algorithm="creff", head_rounds=5, head_lr=0.05), tmp_path / "creff")
    assert head["head"]["acc"]["overall"] > 40 and creff["creff"]["acc"]["overall"] > 40  # 5 classes: chance is 20


def test_dropped_clients_are_reported_and_the_rounds_finish(make_config, tmp_path):
    results = run(make_config(algorithm="feddpm", drop_rate=0.34), tmp_path / "run")
    for entry in results["rounds"]:
        assert len(entry["missing"]) == 1 and set(entry["missing"]) <= set(entry["sampled"])
    clean = run(make_config("clean", algorithm="feddpm"), tmp_path / "clean")
    assert results["rounds"][-1]["holdout_loss"] != clean["rounds"][-1]["holdout_loss"]


class KilledAfterTwoRounds(InProcessGrid):
    """A server that dies while its third round is out: the run folder holds rounds 1–2."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.group_id == "round-3":
            raise KeyboardInterrupt
        return super().send_and_receive(messages, timeout=timeout)


def test_resume_continues_a_killed_run_from_its_last_finished_round(make_config, tmp_path):
    config = make_config(algorithm="feddpm")
    whole = run(config, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "killed", grid_type=KilledAfterTwoRounds)
    logged = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in logged if line["stage"] == "round"] == [1, 2]
    resumed = run(config, tmp_path / "killed", resume=True)
    assert [entry["round"] for entry in resumed["rounds"]] == [1, 2, 3, 4]
    expected, got = load_file(tmp_path / "whole" / "denoiser.safetensors"), load_file(tmp_path / "killed" / "denoiser.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert resumed["pseudo_only"] == whole["pseudo_only"]


def test_warmup_uploads_are_counted_as_models_or_as_features(make_config, tmp_path):
    as_features = run(make_config("features", warmup_upload="features"), tmp_path / "features")["warmup"]
    as_models = run(make_config("models", warmup_upload="model"), tmp_path / "models")["warmup"]
    feature_payload = 20 * 5 * (16 * 4 + 8)  # aux_per_class × classes rows of float32 features and int64 labels
    assert feature_payload <= as_features["up_bytes"] <= feature_payload + 4 * 16384
    model_bytes = parameter_bytes(make_config("size"))
    assert 4 * model_bytes <= as_models["up_bytes"] <= 4 * (model_bytes + 16384)


def test_a_reused_warmup_must_match(make_config, tmp_path):
    run(make_config("source", algorithm="fedavg"), tmp_path / "source")
    reused = run(make_config("reuse", algorithm="feddpm", warmup_from=str(tmp_path / "source")), tmp_path / "reuse")
    assert reused["warmup"]["reused_from"] == str(tmp_path / "source")
    with pytest.raises(UserError, match="differs in aux_per_class"):
        run(make_config("other", algorithm="feddpm", aux_per_class=10, warmup_from=str(tmp_path / "source")), tmp_path / "other")


def test_private_clients_claim_at_most_their_budget(make_config, tmp_path):
    config = make_config(algorithm="feddpm", rounds=2, clients=2, clients_per_round=2)
    # The CLT accountant calibrates in milliseconds; the tight one is tested against PLD in tests/privacy.
    text = config.read_text().replace("delta: 0.0001", "delta: 0.0001\n  epsilon: 10.0\n  accountant: clt")
    config.write_text(text)
    results = run(config, tmp_path / "run")
    assert results["private"] and 9.0 <= results["warmup"]["max_client_epsilon"] <= 10.0
    assert "refined" not in results  # the head refinement touches real features without DP
