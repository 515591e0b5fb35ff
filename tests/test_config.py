from pathlib import Path

import pytest

from featdiff.config import config_from_dict, dump_config, load_config, parse_overrides
from featdiff.errors import UserError

SCRATCH = {"init": "scratch", "trainable": "all"}
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    config = load_config(path)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(config))
    assert load_config(saved) == config


def test_overrides_are_parsed_as_yaml_and_typed():
    config = config_from_dict({}, parse_overrides(["seed=3", "diffusion.lr=1e-4", "generation.count_rule=balanced"]))
    assert config.seed == 3
    assert config.diffusion.lr == pytest.approx(1e-4)
    assert config.generation.count_rule == "balanced"


@pytest.mark.parametrize(
    "values, key",
    [
        ({"sede": 1}, "sede"),
        ({"diffusion": {"lr_rate": 1}}, "diffusion.lr_rate"),
        ({"data": {"imbalance_factor": 0.5}}, "data.imbalance_factor"),
        ({"method": "gan"}, "method"),
        ({"seed": "one"}, "seed"),
        ({"classifier": {"epochs": 0}}, "classifier.epochs"),
        ({"diffusion": {"sampler": "ddim", "sample_steps": 5000}}, "diffusion.sample_steps"),
        ({"features": {"augmented_views": True}}, "features.augmented_views"),
        ({"method": "e2e", "finetune": {"init": "scratch"}}, "finetune.trainable"),
        ({"method": "ldmlr_stale", "finetune": SCRATCH}, "finetune.init"),
        (
            {"method": "e2e", "data": {"dataset": "cifar10"}, "encoder": {"checkpoint": "x.safetensors"}, "finetune": SCRATCH},
            "encoder.checkpoint",
        ),
    ],
)
def test_bad_values_name_their_key(values, key):
    with pytest.raises(UserError, match=f"'{key}'") as error:
        config_from_dict(values)
    assert "\n" not in str(error.value)


def test_faithful_preset_fills_unset_fields_and_yields_to_explicit_ones():
    faithful = config_from_dict({"diffusion": {"faithful": True}}).diffusion
    assert (faithful.resolved_prediction(), faithful.resolved_weighting()) == ("x0", "snr")
    assert (faithful.resolved_scaling(), faithful.resolved_sampler()) == ("unit_interval", "ddpm")
    assert faithful.resolved_sample_steps() == faithful.num_steps == 1000
    mixed = config_from_dict({"diffusion": {"faithful": True, "prediction": "eps"}}).diffusion
    assert mixed.resolved_prediction() == "eps" and mixed.resolved_weighting() == "snr"
    default = config_from_dict({}).diffusion
    assert (default.resolved_prediction(), default.resolved_sampler(), default.resolved_sample_steps()) == ("eps", "ddim", 50)


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["seed"])
