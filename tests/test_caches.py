"""The shared caches (extracted features, decoded images) repair themselves: a damaged cache file is
detected, deleted and built again, and the run that met it finishes as if nothing had happened."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from featdiff import features
from featdiff.config import FeatureConfig, load_config, parse_overrides
from featdiff.data.bundle import load_dataset
from featdiff.features import encode_dataset
from featdiff.models.small_cnn import SmallCNN
from featdiff.pipeline import execute
from featdiff.runs import Run

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FAST_FC_RETRAIN = ["method=fc_retrain", "device=cpu", "encoder.epochs=1", "classifier.epochs=3"]


def count_extractions(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = features._encode_views

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "_encode_views", counted)
    return calls


def test_truncated_feature_cache_is_rebuilt_and_the_run_succeeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATDIFF_CACHE", str(tmp_path / "cache"))
    config = load_config(PROJECT_ROOT / "configs" / "digits_ldmlr.yaml", parse_overrides(FAST_FC_RETRAIN))
    first = execute(Run.create(tmp_path / "first", config))
    cached = list((tmp_path / "cache" / "features").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".safetensors"
    path = cached[0]
    intact = {name: tensor.clone() for name, tensor in load_file(path).items()}  # load_file maps the file: copy before truncating it
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    capsys.readouterr()

    calls = count_extractions(monkeypatch)
    second = execute(Run.create(tmp_path / "second", config))
    assert calls, "the damaged cache was served instead of being rebuilt"
    assert f"feature cache {path} is damaged" in capsys.readouterr().err
    assert second["acc"] == first["acc"] and second["per_class"] == first["per_class"]
    rebuilt = load_file(path)  # whole again, and the same features
    assert rebuilt.keys() == intact.keys() and all(torch.equal(rebuilt[k], intact[k]) for k in intact)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


@pytest.fixture(scope="module")
def digits():
    config = load_config(PROJECT_ROOT / "configs" / "digits_ldmlr.yaml")
    return load_dataset(config.data, seed=0)


@pytest.mark.parametrize("damage", ["empty", "missing_keys", "garbage"])
def test_damaged_feature_cache_files_are_rebuilt(tmp_path, monkeypatch, digits, damage):
    torch.manual_seed(0)
    model = SmallCNN(digits.num_classes, in_channels=digits.train.images.shape[1]).eval()
    config, cpu = FeatureConfig(style="eval"), torch.device("cpu")
    built = encode_dataset(model, digits, config, 0, cpu, cache=tmp_path)
    (path,) = (tmp_path / "features").iterdir()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing_keys":
        save_file({"train_x": built.train.features}, path)
    else:
        path.write_bytes(b"\xff" * 64)

    calls = count_extractions(monkeypatch)
    again = encode_dataset(model, digits, config, 0, cpu, cache=tmp_path)
    assert calls
    assert torch.equal(again.train.features, built.train.features) and torch.equal(again.test.labels, built.test.labels)
    assert set(load_file(path)) == {"train_x", "train_y", "test_x", "test_y"}

    calls.clear()
    encode_dataset(model, digits, config, 0, cpu, cache=tmp_path)
    assert not calls  # an intact cache is still served
