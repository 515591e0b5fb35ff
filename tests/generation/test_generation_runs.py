"""The generation knobs reach the runs: what a `gaussian` or `ldmlr` run stores moves as the knob says."""

import pytest
import torch
from safetensors.torch import load_file

from featdiff.config import config_from_dict
from featdiff.pipeline import execute
from featdiff.runs import Run

FAST = {"data": {"dataset": "digits"}, "classifier": {"epochs": 10}, "diffusion": {"steps": 150}}


def _run(tmp_path, encoder: str, name: str, method: str, **sections) -> tuple[dict, Run]:
    values = {"name": name, "method": method, **FAST, "encoder": {"checkpoint": encoder}}
    for section, keys in sections.items():
        values[section] = {**values.get(section, {}), **keys}
    run = Run.create(tmp_path / name, config_from_dict(values))
    return execute(run), run


def _spread(run: Run, file: str, label: int) -> torch.Tensor:
    stored = load_file(run.path(file))
    return stored["features"][stored["labels"] == label].std(0).mean()


@pytest.mark.slow
def test_temperature_transfer_and_pseudo_only_reach_the_gaussian_generator(tmp_path, digits_encoder):
    plain, plain_run = _run(tmp_path, digits_encoder, "plain", "gaussian", generation={"count_rule": "balanced"})
    rare = min(range(10), key=lambda c: plain["train_counts"][c])
    head = max(range(10), key=lambda c: plain["train_counts"][c])
    hot, hot_run = _run(tmp_path, digits_encoder, "hot", "gaussian", generation={"count_rule": "balanced", "temperature": 2.0})
    ratio = _spread(hot_run, "gaussian_generation.safetensors", rare) / _spread(plain_run, "gaussian_generation.safetensors", rare)
    assert ratio == pytest.approx(2.0, rel=1e-4)
    moved, moved_run = _run(tmp_path, digits_encoder, "moved", "gaussian", generation={"count_rule": "balanced", "transfer": "residual"})
    stored = [load_file(r.path("gaussian_generation.safetensors")) for r in (plain_run, moved_run)]
    # The head class has nobody to borrow from: its pseudo-features are the generator's own.
    assert torch.equal(*(s["features"][s["labels"] == head] for s in stored))
    assert not torch.equal(*(s["features"][s["labels"] == rare] for s in stored))
    alone, _ = _run(
        tmp_path, digits_encoder, "alone", "gaussian", generation={"count_rule": "uniform", "per_class": 40, "include_real": False}
    )
    assert alone["pseudo_counts"] == [40] * 10


@pytest.mark.slow
def test_the_diffusion_sampler_takes_the_temperature_and_ldmlr_reports_the_gaussian_control(tmp_path, digits_encoder):
    # A denoiser trained long enough that its samples sit inside x̂0's clip box, which bounds any spread.
    trained = {"steps": 800, "width": 64}
    plain, plain_run = _run(tmp_path, digits_encoder, "plain", "ldmlr", generation={"count_rule": "balanced"}, diffusion=trained)
    assert "gaussian" in plain["controls"] and "report" in plain["controls"]["gaussian"]
    sampled = trained | {"denoiser_from": str(plain_run.directory)}  # the same denoiser, sampled hotter
    hot, hot_run = _run(
        tmp_path, digits_encoder, "hot", "ldmlr", generation={"count_rule": "balanced", "temperature_power": 0.5}, diffusion=sampled
    )
    rare = min(range(10), key=lambda c: plain["train_counts"][c])
    assert _spread(hot_run, "pseudo_features.safetensors", rare) > 1.1 * _spread(plain_run, "pseudo_features.safetensors", rare)
