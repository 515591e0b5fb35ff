"""The federated controls: the class Gaussian of the setup's statistics (every denoiser run's
free control, and an algorithm of its own), and their private versions."""

import importlib.util
from pathlib import Path

import pytest

from featdiff.errors import UserError

_spec = importlib.util.spec_from_file_location("federated_apps", Path(__file__).with_name("test_apps.py"))
_apps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_apps)
run = _apps.run


def private(config: Path, epsilon: float = 10.0) -> Path:
    """The config with every client at (ε, 1e-4)-DP; the tight accountant, as featdiff claims."""
    text = config.read_text().replace("delta: 0.0001", f"delta: 0.0001\n  epsilon: {epsilon}\n  linear_batch: 64\n  linear_lr: 0.05")
    config.write_text(text)
    return config


def test_the_gaussian_stats_algorithm_is_the_denoiser_runs_free_control(make_config, tmp_path):
    denoiser = run(make_config("denoiser", algorithm="fedavg"), tmp_path / "fedavg")
    alone = run(make_config("alone", algorithm="gaussian_stats"), tmp_path / "gaussian")
    assert alone["gaussian_stats"] == denoiser["gaussian_stats"]  # same statistics, same draws, same head
    assert alone["gaussian_stats_refined"]["acc"] == denoiser["gaussian_stats_refined"]["acc"]


@pytest.mark.slow
def test_private_controls_spend_at_most_every_clients_budget_and_still_learn(make_config, tmp_path):
    two = {"clients": 2, "clients_per_round": 2}  # every client calibrates its own σ: two clients, half the accounting
    head = run(private(make_config("head", algorithm="fedavg_head", head_rounds=10, **two)), tmp_path / "head")
    assert head["private"] and 9.0 <= head["max_client_epsilon"] <= 10.0
    assert head["head"]["acc"]["overall"] > 30  # chance is 20
    # 400 draws per class: with the default 40 the head takes 20 steps and stays near chance even
    # without DP (measured 34 %; 98 % non-private and 97 % at ε = 10 with 400).
    stats = run(private(make_config("stats", algorithm="gaussian_stats", pseudo_per_class=400, **two)), tmp_path / "stats")
    assert 9.0 <= stats["max_client_epsilon"] <= 10.0 and "gaussian_stats_refined" not in stats
    assert stats["gaussian_stats"]["acc"]["overall"] > 60


def test_creff_has_no_private_version(make_config):
    from featdiff.config import check_federated, load_config

    with pytest.raises(UserError, match="creff has no private version"):
        check_federated(load_config(private(make_config(algorithm="creff"))))


def test_the_reported_head_is_chosen_on_the_validation_part():
    from featdiff.federated.strategies.fedavg import chosen_head

    def summary(validation, report):
        return {"tuned": {"validation": {"acc": {"overall": validation}}, "report": {"acc": {"overall": report}}}}

    results = {"pseudo_only": summary(60.0, 90.0), "refined": summary(70.0, 10.0)}
    assert chosen_head(results, ("pseudo_only", "refined")) == "refined"
    results["refined"] = summary(60.0, 99.0)
    assert chosen_head(results, ("pseudo_only", "refined")) == "pseudo_only"  # a tie keeps the earlier
    assert chosen_head({"pseudo_only": summary(1.0, 1.0)}, ("pseudo_only", "refined")) == "pseudo_only"


@pytest.mark.slow
def test_a_private_denoiser_run_refines_its_head_within_every_clients_budget(make_config, tmp_path):
    config = private(make_config(algorithm="fedddpm", rounds=2, private_refine=True, head_rounds=3, clients=2, clients_per_round=2))
    config.write_text(config.read_text().replace("  epsilon: 10.0", "  epsilon: 10.0\n  accountant: clt\n  release_share: 0.5"))
    results = run(config, tmp_path / "run")
    assert 4.5 <= results["warmup"]["max_client_epsilon"] <= 5.0  # the denoiser's share (CLT, as the plan calibrates)
    assert 9.0 <= results["max_client_epsilon"] <= 10.0  # both, composed by the tight accountant
    assert "refined" in results and results["chosen"] in ("pseudo_only", "refined")
