import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from featdiff.config import RunConfig, check_federated, config_from_dict, config_to_dict, dump_config, load_config, parse_overrides
from featdiff.errors import UserError
from featdiff.method_catalog import method_names

SCRATCH = {"init": "scratch", "trainable": "all"}
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def rejects(values: dict, *fragments: str) -> str:
    """The one-line message config_from_dict gives for `values`, checked to contain `fragments`."""
    with pytest.raises(UserError) as error:
        config_from_dict(values)
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    config = load_config(path)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(config))
    assert load_config(saved) == config


def test_a_config_with_every_section_changed_round_trips(tmp_path):
    values = {
        "name": "everything",
        "method": "e2e",
        "seed": 7,
        "data": {"dataset": "cifar100", "imbalance_factor": 50, "train_holdout_fraction": 0.1},
        "evaluation": {"validation_fraction": 0.3, "validation_seed": 4},
        "encoder": {"milestones": [3, 5], "lr": "1e-2"},
        "diffusion": {"faithful": True, "scaling": "standardize", "sample_steps": 20, "lr": 2e-4},
        "generation": {"count_rule": "balanced", "floor": 0},
        "filter": {"enabled": True, "radius": "rms", "aid_edge": 3},
        "finetune": {"init": "scratch", "trainable": "all", "milestones": [160, 180], "augment_padding": 2},
        "e2e": {"gamma_ge": 0.5, "clip_follows_encoder": True, "strategy": "C"},
        "compute": {"threads": 1, "compile": True},
    }
    config = config_from_dict(values)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(config))
    again = load_config(saved)
    assert again == config
    assert config_to_dict(again) == config_to_dict(config)
    # Whole numbers given for float fields are stored (and dumped) as floats.
    assert type(config.data.imbalance_factor) is float and type(config.filter.aid_edge) is float
    assert config.diffusion.model_copy(update={"steps": 5}).steps == 5 and config.diffusion.steps == 3000


def test_configs_are_immutable():
    config = RunConfig()
    with pytest.raises(Exception, match="frozen"):
        config.seed = 3
    with pytest.raises(Exception, match="frozen"):
        config.diffusion.lr = 1.0


def test_overrides_are_parsed_as_yaml_and_typed():
    config = config_from_dict({}, parse_overrides(["seed=3", "diffusion.lr=1e-4", "generation.count_rule=balanced"]))
    assert config.seed == 3
    assert config.diffusion.lr == pytest.approx(1e-4)
    assert config.generation.count_rule == "balanced"


def test_overrides_win_over_the_file_and_leave_the_callers_dict_alone():
    values = {"diffusion": {"lr": 0.5, "steps": 10}}
    config = config_from_dict(values, parse_overrides(["diffusion.steps=20", "compute.threads=2"]))
    assert (config.diffusion.lr, config.diffusion.steps, config.compute.threads) == (0.5, 20, 2)
    assert values == {"diffusion": {"lr": 0.5, "steps": 10}}
    with pytest.raises(UserError, match="'seed' is not a section"):
        config_from_dict({"seed": 1}, parse_overrides(["seed.x=1"]))
    with pytest.raises(UserError, match="'diffusion.stepz'"):
        config_from_dict({}, parse_overrides(["diffusion.stepz=3"]))


def test_exponent_strings_are_numbers():
    """YAML 1.1 reads `1e-4` (no dot) as a string; it must still be the number 1e-4."""
    assert config_from_dict({"diffusion": {"lr": "1e-4"}}).diffusion.lr == 1e-4
    assert config_from_dict({"e2e": {"gamma_ge": "2e-1"}}).e2e.gamma_ge == 0.2
    rejects({"diffusion": {"lr": "fast"}}, "'diffusion.lr'", "must be a number", "'fast'")
    rejects({"diffusion": {"lr": ".nan"}}, "'diffusion.lr'")
    rejects({"diffusion": {"steps": "1e3"}}, "'diffusion.steps'", "must be an integer")


def test_exponent_in_a_yaml_file(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("diffusion:\n  lr: 1e-4\nclassifier:\n  weight_decay: 5e-6\n")
    config = load_config(path)
    assert config.diffusion.lr == 1e-4 and config.classifier.weight_decay == 5e-6


def test_unknown_keys_name_the_dotted_key_and_the_valid_ones():
    message = rejects({"diffusion": {"lrr": 1}}, "unknown config key 'diffusion.lrr'", "valid keys:")
    assert "lr" in message.split("valid keys:")[1] and "ema_decay" in message
    rejects({"sede": 1}, "unknown config key 'sede'", "seed")
    rejects({"compute": {"thread": 1}}, "unknown config key 'compute.thread'", "threads")


@pytest.mark.parametrize(
    "values, fragments",
    [
        ({"seed": "one"}, ("'seed'", "must be an integer", "'one'")),
        ({"seed": "3"}, ("'seed'", "must be an integer")),  # no silent str -> int
        ({"seed": 1.5}, ("'seed'", "must be an integer")),
        ({"seed": True}, ("'seed'", "must be an integer", "true")),  # bool is not an int
        ({"features": {"augmented_views": True}}, ("'features.augmented_views'", "must be an integer")),
        ({"diffusion": {"lr": True}}, ("'diffusion.lr'", "must be a number")),
        ({"diffusion": {"faithful": 1}}, ("'diffusion.faithful'", "must be true or false")),  # int is not a bool
        ({"diffusion": {"faithful": "yes"}}, ("'diffusion.faithful'", "must be true or false")),
        ({"name": 3}, ("'name'", "must be a string")),
        ({"encoder": {"milestones": 20}}, ("'encoder.milestones'", "must be a list")),
        ({"encoder": {"milestones": [20, "x"]}}, ("'encoder.milestones[1]'", "must be an integer")),
        ({"diffusion": 3}, ("'diffusion'", "mapping")),
        ({"method": "gan"}, ("'method'", "must be one of", "'ldmlr'", "'gan'")),
        ({"diffusion": {"schedule": "quadratic"}}, ("'diffusion.schedule'", "'cosine'")),
        ({"diffusion": {"prediction": "v"}}, ("'diffusion.prediction'", "'eps'")),
    ],
)
def test_wrong_types_and_choices_name_their_key(values, fragments):
    rejects(values, *fragments)


def test_the_train_holdout_keeps_its_old_name_in_saved_configs():
    """Configs written before the test set's validation part existed call the training holdout
    data.validation_fraction; they still load, as the renamed key."""
    assert config_from_dict({"data": {"validation_fraction": 0.25}}).data.train_holdout_fraction == 0.25


@pytest.mark.parametrize(
    "values, key",
    [
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"data": {"imbalance_factor": 0.5}}, "data.imbalance_factor"),
        ({"data": {"train_holdout_fraction": 1.0}}, "data.train_holdout_fraction"),
        ({"evaluation": {"validation_fraction": 0.0}}, "evaluation.validation_fraction"),
        ({"evaluation": {"validation_fraction": 1.0}}, "evaluation.validation_fraction"),
        ({"encoder": {"epochs": 0}}, "encoder.epochs"),
        ({"encoder": {"lr": 0}}, "encoder.lr"),
        ({"encoder": {"augment_padding": -1}}, "encoder.augment_padding"),
        ({"features": {"augmented_views": -1}}, "features.augmented_views"),
        ({"classifier": {"epochs": 0}}, "classifier.epochs"),
        ({"classifier": {"batch_size": 0}}, "classifier.batch_size"),
        ({"diffusion": {"num_steps": 1}}, "diffusion.num_steps"),
        ({"diffusion": {"width": 0}}, "diffusion.width"),
        ({"diffusion": {"depth": 0}}, "diffusion.depth"),
        ({"diffusion": {"lr": -1e-3}}, "diffusion.lr"),
        ({"diffusion": {"ema_decay": 1}}, "diffusion.ema_decay"),
        ({"diffusion": {"eta": -0.5}}, "diffusion.eta"),
        ({"diffusion": {"sampler": "ddim", "sample_steps": 5000}}, "diffusion.sample_steps"),
        ({"diffusion": {"sample_steps": 0}}, "diffusion.sample_steps"),
        ({"generation": {"ratio": -0.1}}, "generation.ratio"),
        ({"generation": {"floor": -1}}, "generation.floor"),
        ({"filter": {"id_edge": 0}}, "filter.id_edge"),
        ({"filter": {"id_edge": 3, "aid_edge": 2}}, "filter.id_edge"),
        ({"filter": {"ood_weight": -1}}, "filter.ood_weight"),
        ({"finetune": {"batch_size": 1}}, "finetune.batch_size"),
        ({"finetune": {"classifier_lr_scale": 0}}, "finetune.classifier_lr_scale"),
        ({"finetune": {"warmup_epochs": -1}}, "finetune.warmup_epochs"),
        ({"e2e": {"gamma_ge": -1}}, "e2e.gamma_ge"),
        ({"e2e": {"prototype_momentum": 0}}, "e2e.prototype_momentum"),
        ({"e2e": {"standardizer_momentum": 1.5}}, "e2e.standardizer_momentum"),
        ({"e2e": {"pseudo_share": 1}}, "e2e.pseudo_share"),
        ({"e2e": {"ge_every": 0}}, "e2e.ge_every"),
        ({"e2e": {"denoiser_pretrain_steps": -1}}, "e2e.denoiser_pretrain_steps"),
        ({"e2e": {"semantic_max_t": -1}}, "e2e.semantic_max_t"),
        ({"compute": {"threads": 0}}, "compute.threads"),
        ({"method": "e2e", "finetune": {"init": "scratch"}}, "finetune.trainable"),
        ({"method": "ldmlr_stale", "finetune": SCRATCH}, "finetune.init"),
        (
            {"method": "e2e", "data": {"dataset": "cifar10"}, "encoder": {"checkpoint": "x.safetensors"}, "finetune": SCRATCH},
            "encoder.checkpoint",
        ),
    ],
)
def test_bad_values_name_their_key(values, key):
    rejects(values, f"config key '{key}' ")


def test_range_messages_say_the_bound_and_the_value():
    rejects({"diffusion": {"lr": 0}}, "config key 'diffusion.lr' must be > 0", "got 0.0")
    rejects({"classifier": {"epochs": 0}}, "config key 'classifier.epochs' must be >= 1, got 0")


def test_compute_threads():
    assert config_from_dict({}).compute.threads is None
    assert config_from_dict({"compute": {"threads": 1}}).compute.threads == 1
    assert config_from_dict({"compute": {"threads": None}}).compute.threads is None
    rejects({"compute": {"threads": 0}}, "'compute.threads'", ">= 1")
    rejects({"compute": {"threads": -2}}, "'compute.threads'")
    rejects({"compute": {"threads": True}}, "'compute.threads'", "must be an integer")
    rejects({"compute": {"threads": "2"}}, "'compute.threads'", "must be an integer")
    rejects({"compute": {"threads": 1.5}}, "'compute.threads'", "must be an integer")


def test_e2e_needs_standardized_diffusion_features():
    """e2e standardises features with running statistics; the faithful preset's [0, 1] map is refused."""
    rejects({"method": "e2e", "diffusion": {"faithful": True}}, "'diffusion.faithful'", "diffusion.scaling: standardize")
    rejects({"method": "e2e", "diffusion": {"scaling": "unit_interval"}}, "'diffusion.scaling'", "'standardize'")
    config = config_from_dict({"method": "e2e", "diffusion": {"faithful": True, "scaling": "standardize"}})
    assert config.diffusion.resolved_scaling() == "standardize" and config.diffusion.resolved_prediction() == "x0"
    assert config_from_dict({"method": "ldmlr", "diffusion": {"faithful": True}}).diffusion.resolved_scaling() == "unit_interval"


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
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["=3"])
    with pytest.raises(UserError, match="not valid YAML"):
        parse_overrides(["encoder.milestones=[1, 2"])


def load_error(path: Path) -> str:
    with pytest.raises(UserError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "null\n", "~\n"])
def test_empty_config_file(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert f"config file {path} is empty" in load_error(path)


def test_malformed_yaml_says_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: run\nmethod: ldmlr\ndiffusion:\n  lr: 1e-3\n   steps: 20\n")
    message = load_error(path)
    assert f"config file {path} is not valid YAML: line 5, column 9: " in message, message
    path.write_text("name: run\nencoder:\n  milestones: [20, 25\n")
    assert "line 4, column 1" in load_error(path)


def test_config_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: run\n")
    assert "must hold a mapping" in load_error(path)


def test_config_path_that_is_a_directory_or_missing(tmp_path):
    assert f"config path {tmp_path} is a directory" in load_error(tmp_path)
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in load_error(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "federated, fragments", [({"alpha": 0}, ("federated.alpha", "> 0")), ({"clients": 0}, ("federated.clients", ">= 1"))]
)
def test_federated_settings_name_their_key(federated, fragments):
    rejects({"federated": federated}, *fragments)


def federated_refusal(values: dict) -> str:
    """The one-line message `check_federated` gives for a config that loads."""
    with pytest.raises(UserError) as error:
        check_federated(config_from_dict(values))
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_federated_rules_hold_for_federated_runs_only():
    crowded = {"federated": {"clients": 5, "clients_per_round": 8}}
    config_from_dict(crowded)  # a `featdiff run` never reads the federated section
    message = federated_refusal(crowded)
    assert message == "config key 'federated.clients_per_round' must be <= federated.clients = 5, got 8"
    check_federated(config_from_dict({"federated": {"clients": 5, "clients_per_round": 5}}))


def test_privacy_rules_hold_for_private_federated_runs_only():
    short = {"diffusion": {"num_steps": 500}}
    check_federated(config_from_dict(short))  # not private: the privacy section is ignored
    for private in ({"epsilon": 10}, {"noise_multiplier": 1.0}):
        message = federated_refusal({**short, "privacy": private})
        assert message == "config key 'privacy.split_timestep' must be below diffusion.num_steps (500), got 900"
    check_federated(config_from_dict({**short, "privacy": {"epsilon": 10, "split_timestep": 450}}))


KNOBS = {
    ("ldmlr_dp",): {"diffusion": {"num_steps": 500}},  # privacy.split_timestep stays 900
    ("e2e",): {"diffusion": {"faithful": True}, "filter": {"enabled": True, "radius": "max"}},
    ("ldmlr", "ldmlr_stale", "ldmlr_refit"): {"diffusion": {"guidance": 0.5}},  # diffusion.label_dropout stays 0
}
"""Per group of rule owners, valid values of other sections that only those owners' rules refuse."""
FEDERATED_KNOBS = {"federated": {"clients": 5, "clients_per_round": 8}}


def merged(*parts: dict) -> dict:
    values: dict = {}
    for part in parts:
        for section, keys in part.items():
            values[section] = {**values.get(section, {}), **keys} if isinstance(keys, dict) else keys
    return values


@pytest.mark.parametrize("method", method_names())
def test_each_method_ignores_the_knobs_only_other_methods_and_federated_runs_constrain(method):
    others = [knobs for owners, knobs in KNOBS.items() if method not in owners]
    config = config_from_dict(merged({"method": method}, *others, FEDERATED_KNOBS))
    assert config.method == method and config.federated.clients_per_round == 8
    for owners, knobs in KNOBS.items():  # and its own rules still refuse them
        if method in owners:
            with pytest.raises(UserError):
                config_from_dict(merged({"method": method}, knobs))


def test_a_private_method_keeps_refusing_what_it_refused():
    rejects(
        {"method": "ldmlr_dp", "diffusion": {"num_steps": 500}},
        "config key 'privacy.split_timestep' must be below diffusion.num_steps (500), got 900",
    )
    assert config_from_dict({"method": "ldmlr", "diffusion": {"num_steps": 500}}).privacy.split_timestep == 900
    assert config_from_dict({"method": "ldmlr_dp", "diffusion": {"num_steps": 500}, "privacy": {"split_timestep": 450}})


def test_guidance_needs_a_trained_unconditional_model_where_stage_two_trains_it():
    for method in ("ldmlr", "ldmlr_stale", "ldmlr_refit"):
        rejects({"method": method, "diffusion": {"guidance": 0.5}}, "config key 'diffusion.guidance' is 0.5", "label_dropout")
        assert config_from_dict({"method": method, "diffusion": {"guidance": 0.5, "label_dropout": 0.1}}).diffusion.guidance == 0.5
    # A private denoiser's Phase I trains the null class label-free.
    assert config_from_dict({"method": "ldmlr_dp", "diffusion": {"guidance": 0.5}}).diffusion.guidance == 0.5


def test_pseudo_only_needs_a_count_for_every_class():
    rejects({"generation": {"include_real": False}}, "config key 'generation.include_real'", "count_rule: uniform")
    config = config_from_dict({"generation": {"include_real": False, "count_rule": "uniform", "per_class": 300}})
    assert config.generation.per_class == 300


def test_e2e_filter_radius_is_its_own_rule():
    rejects({"method": "e2e", "filter": {"enabled": True, "radius": "max"}}, "config key 'filter.radius' must be 'rms' for method e2e")
    assert config_from_dict({"method": "e2e", "filter": {"enabled": False, "radius": "max"}}).filter.radius == "max"


def test_scratch_is_refused_for_methods_that_do_not_train_the_encoder_and_names_those_that_do():
    message = rejects({"method": "ldmlr", "finetune": SCRATCH}, "config key 'finetune.init'", "method ldmlr")
    assert "ce_finetune, e2e or ldmlr_refit" in message
    for method in ("ce_finetune", "e2e", "ldmlr_refit"):
        assert config_from_dict({"method": method, "finetune": SCRATCH}).finetune.init == "scratch"


def test_the_methods_are_the_modules_of_the_methods_package():
    package = Path(__file__).resolve().parents[1] / "src" / "featdiff" / "methods"
    modules = {p.stem for p in package.glob("*.py")} | {p.parent.name for p in package.glob("*/__init__.py")}
    assert set(method_names()) == modules - {"__init__", "stages"}
    assert {"ce", "fc_retrain", "ldmlr", "ce_finetune", "ldmlr_stale", "ldmlr_refit", "e2e", "ldmlr_dp"} <= set(method_names())
    message = rejects({"method": "gan"}, "config key 'method' must be one of")
    assert all(repr(name) in message for name in method_names())


TOY = """
from featdiff.config import config_rule


def rules(config):
    config_rule(config.seed != 13, "seed", "must not be 13 for method {name}")


def run(context):
    raise AssertionError("not run here")
"""


def forget_toylab() -> None:
    for name in [name for name in sys.modules if name == "toylab" or name.startswith("toylab.")]:
        del sys.modules[name]


@pytest.fixture
def toy_package(tmp_path, monkeypatch) -> Iterator[Path]:
    """A fresh package `toylab` on the path (each test's own: none is left imported)."""
    package = tmp_path / "toylab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_toylab()
    yield package
    forget_toylab()


def test_a_method_from_featdiff_methods_is_one_module_with_its_rules(toy_package, monkeypatch):
    (toy_package / "toy.py").write_text(TOY.format(name="toy"))
    monkeypatch.setenv("FEATDIFF_METHODS", " toylab.toy ,")
    assert method_names()[-1] == "toy"
    assert config_from_dict({"method": "toy", "seed": 3}).method == "toy"
    rejects({"method": "toy", "seed": 13}, "config key 'seed' must not be 13 for method toy")
    assert config_from_dict({"method": "ldmlr", "seed": 13}).seed == 13  # the toy's rule is the toy's alone


@pytest.mark.parametrize(
    "listed, fragments",
    [
        ("toylab.missing", ("FEATDIFF_METHODS lists toylab.missing", "cannot be imported")),
        ("toylab/toy.py", ("not a dotted module path",)),
        ("toylab.ldmlr", ("method 'ldmlr' is already featdiff.methods.ldmlr",)),
        ("toylab.norun", ("toylab.norun defines no run(context) function",)),
    ],
)
def test_bad_method_modules_are_one_line_errors(toy_package, monkeypatch, listed, fragments):
    (toy_package / "ldmlr.py").write_text(TOY.format(name="ldmlr"))
    (toy_package / "norun.py").write_text("RULES = None\n")
    monkeypatch.setenv("FEATDIFF_METHODS", listed)
    name = listed.rpartition(".")[2]
    rejects({"method": name if name.isidentifier() else "ldmlr"}, *fragments)


def test_phase_one_bounded_per_record_needs_replace_one_and_the_tight_accountant():
    per_record = {"phase_one_accounting": "per_record"}
    rejects(
        {"method": "ldmlr_dp", "privacy": {**per_record, "adjacency": "add_remove_one"}},
        "config key 'privacy.phase_one_accounting'",
        "adjacency: replace_one",
    )
    rejects(
        {"method": "ldmlr_dp", "privacy": {**per_record, "accountant": "clt"}},
        "config key 'privacy.phase_one_accounting'",
        "accountant: prv",
    )
    assert config_from_dict({"method": "ldmlr_dp", "privacy": per_record}).privacy.phase_one_accounting == "per_record"
