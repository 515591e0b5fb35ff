"""Bring your own features: a features file from any encoder runs every feature-only method, and
a bad file is one line and exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from featdiff.data.feature_file import FeatureFile, load_feature_file, save_feature_file
from featdiff.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COUNTS = [120, 60, 30, 12, 6, 3, 2]


def _arrays(dim: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(COUNTS), dim)) * 3
    train_labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    test_labels = np.repeat(np.arange(len(COUNTS)), 20)
    return {
        "train_features": (centres[train_labels] + rng.normal(size=(len(train_labels), dim))).astype(np.float32),
        "train_labels": train_labels,
        "test_features": (centres[test_labels] + rng.normal(size=(len(test_labels), dim))).astype(np.float32),
        "test_labels": test_labels,
    }


def write_npz(path: Path, **changes) -> Path:
    arrays = _arrays() | changes
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_and_safetensors_files_load_with_their_class_names(tmp_path):
    names = np.array([f"class {c}" for c in range(len(COUNTS))])
    npz = load_feature_file(write_npz(tmp_path / "f.npz", class_names=names))
    assert npz.class_names == tuple(names.tolist()) and npz.feature_dim == 24 and npz.num_classes == 7
    saved = tmp_path / "f.safetensors"
    save_feature_file(saved, npz)
    again = load_feature_file(saved)
    assert again.class_names == npz.class_names
    assert torch.equal(again.train_features, npz.train_features) and torch.equal(again.test_labels, npz.test_labels)


BAD = {
    "missing key": ({"test_labels": None}, "lacks test_labels"),
    "shapes disagree": ({"train_labels": np.repeat(np.arange(7), COUNTS)[:-1]}, "same N"),
    "NaN": ({"test_features": np.full((140, 24), np.nan, dtype=np.float32)}, "NaN or infinite"),
    "label out of range": ({"test_labels": np.repeat(np.arange(7), 20) - 1}, "outside 0..6"),
    "empty class": (
        {"train_labels": np.where(np.repeat(np.arange(7), COUNTS) == 3, 4, np.repeat(np.arange(7), COUNTS))},
        "no training record of class 3",
    ),
    "dimensions differ": ({"test_features": np.zeros((140, 12), dtype=np.float32)}, "dimension 24 but its test_features 12"),
    "integer features": ({"train_features": np.zeros((233, 24), dtype=np.int64)}, "floating-point"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_names_its_problem(tmp_path, case):
    changes, fragment = BAD[case]
    with pytest.raises(UserError, match="data.features") as error:
        load_feature_file(write_npz(tmp_path / "bad.npz", **changes))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_pickled_npz_and_other_suffixes_are_refused(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **_arrays(), class_names=np.array([object(), "b"], dtype=object))
    with pytest.raises(UserError, match="without pickle"):
        load_feature_file(pickled)
    (tmp_path / "f.pt").write_bytes(b"")
    with pytest.raises(UserError, match="must be a .safetensors or .npz"):
        load_feature_file(tmp_path / "f.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_feature_file(tmp_path / "none.npz")


def featdiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featdiff", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def _config(tmp_path, features: Path, method: str, **sections) -> Path:
    values = {
        "name": "byo",
        "method": method,
        "data": {"source": "features", "features": str(features)},
        "classifier": {"epochs": 200, "batch_size": 64},
        "diffusion": {"steps": 100, "width": 32, "depth": 1, "time_dim": 16, "sample_steps": 10, "batch_size": 64},
        "compute": {"threads": 1},
        **sections,
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fc_retrain", "gaussian", "ldmlr", "dp_linear"])
def test_every_feature_only_method_runs_on_a_features_file(tmp_path, method):
    features = write_npz(tmp_path / "mine.npz", class_names=np.array([f"c{c}" for c in range(7)]))
    privacy = {"privacy": {"epsilon": 5.0, "delta": 1e-4, "linear_batch": 64}} if method == "dp_linear" else {}
    out = tmp_path / "run"
    result = featdiff("run", str(_config(tmp_path, features, method, **privacy)), "--out", str(out))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "features:mine" and results["imbalance_factor"] == 60.0
    assert "ce" not in results["controls"]  # no trained head came with the features
    assert results["tuned"]["report"]["acc"]["overall"] > 50  # seven separated blobs; chance is 14


def test_methods_that_need_images_are_refused_and_a_bad_file_is_one_line(tmp_path):
    features = write_npz(tmp_path / "mine.npz")
    refused = featdiff("run", str(_config(tmp_path, features, "e2e")), "--out", str(tmp_path / "e2e"))
    assert refused.returncode == 2 and "needs images and an encoder" in refused.stderr and "Traceback" not in refused.stderr
    bad = write_npz(tmp_path / "bad.npz", test_labels=None)
    result = featdiff("run", str(_config(tmp_path, bad, "fc_retrain")), "--out", str(tmp_path / "bad"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "lacks test_labels" in lines[0]
    assert not (tmp_path / "bad").exists() or not (tmp_path / "bad" / "results.json").exists()


def test_a_safetensors_file_without_class_names_numbers_its_classes(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in _arrays().items()}, str(path))
    assert load_feature_file(path).class_names == tuple(str(c) for c in range(7))
    assert isinstance(load_feature_file(path), FeatureFile)
