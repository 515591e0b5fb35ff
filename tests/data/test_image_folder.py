"""Bring your own images: class folders or ImageNet-LT-style list files, decoded, cached, trained on."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from featdiff.data.image_folder import load_image_folder
from featdiff.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRAIN_COUNTS = {"cat": 24, "dog": 8, "eel": 3}


def _image(path: Path, colour: int, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 20, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_folder(root: Path) -> Path:
    """Three colour classes, long-tailed in training, 6 test images each, of unequal sizes."""
    for c, (name, count) in enumerate(TRAIN_COUNTS.items()):
        for i in range(count):
            _image(root / "train" / name / f"{i}.png", 40 + 80 * c, seed=100 * c + i, size=(40 + i % 3, 30))
        for i in range(6):
            _image(root / "test" / name / f"{i}.jpg", 40 + 80 * c, seed=1000 + 100 * c + i)
    return root


def featdiff(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, with its cache under the test's folder and a bare PATH."""
    env = {"FEATDIFF_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "featdiff", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_class_folders_become_image_sets_at_the_image_size(tmp_path):
    train, test = load_image_folder(write_folder(tmp_path / "pets"), 16, cache=tmp_path / "cache")
    assert train.classes == ("cat", "dog", "eel") and train.images.shape == (35, 3, 16, 16)
    assert train.class_counts().tolist() == [24, 8, 3] and test.class_counts().tolist() == [6, 6, 6]
    assert train.images.dtype == torch.uint8 and float(train.images[train.labels == 2].float().mean()) > 150
    again, _ = load_image_folder(tmp_path / "pets", 16, cache=tmp_path / "cache")  # from the cache
    assert torch.equal(again.images, train.images)


def test_list_files_in_imagenet_lt_layout(tmp_path):
    root = write_folder(tmp_path / "pets")

    def rows(split):
        return [f"{split}/{p.parent.name}/{p.name} {list(TRAIN_COUNTS).index(p.parent.name)}" for p in sorted((root / split).rglob("*.*"))]

    (root / "train.txt").write_text("\n".join(rows("train")) + "\n")
    (root / "test.txt").write_text("\n".join(rows("test")) + "\n")
    train, test = load_image_folder(root, 16, train_list="train.txt", test_list="test.txt", cache=tmp_path / "cache")
    assert train.class_counts().tolist() == [24, 8, 3] and len(test) == 18


def test_bad_folders_and_lists_name_their_problem(tmp_path):
    root = write_folder(tmp_path / "pets")
    with pytest.raises(UserError, match="is not a folder"):
        load_image_folder(tmp_path / "none", 16)
    (root / "train" / "fox").mkdir()
    with pytest.raises(UserError, match="fox holds no image"):
        load_image_folder(root, 16, cache=tmp_path / "cache")
    (root / "train" / "fox").rmdir()
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot decode image .*broken.png"):
        load_image_folder(root, 16, cache=tmp_path / "cache")
    (root / "train" / "cat" / "broken.png").unlink()
    (root / "bad.txt").write_text("train/cat/0.png\n")
    with pytest.raises(UserError, match="line 1 .* `relative/path label`"):
        load_image_folder(root, 16, train_list="bad.txt", test_list="bad.txt")


@pytest.mark.slow
def test_a_folder_trains_an_encoder_and_runs_ldmlr_and_a_bad_root_is_one_line(tmp_path):
    root = write_folder(tmp_path / "pets")
    values = {
        "name": "pets",
        "method": "ldmlr",
        "data": {"source": "folder", "root": str(root), "image_size": 16},
        "encoder": {"epochs": 30, "batch_size": 16, "warmup_epochs": 2, "milestones": [25]},
        "classifier": {"epochs": 30, "batch_size": 32},
        "diffusion": {"steps": 50, "width": 32, "depth": 1, "time_dim": 16, "sample_steps": 5, "batch_size": 32},
        "generation": {"count_rule": "balanced"},
        "compute": {"threads": 1},
    }
    config = tmp_path / "pets.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    result = featdiff(tmp_path, "run", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["train_counts"] == [24, 8, 3] and results["tuned"]["report"]["acc"]["overall"] > 50  # colours; chance is 33
    assert (out / "encoder.safetensors").is_file() and "gaussian" in results["controls"]
    values["data"]["root"] = str(tmp_path / "absent")
    config.write_text(yaml.safe_dump(values))
    bad = featdiff(tmp_path, "run", str(config), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "is not a folder" in bad.stderr


def test_encode_writes_the_features_file_a_run_then_reads(tmp_path):
    """`featdiff encode` of a folder dataset through a saved encoder: the features file format
    with the class names, which `data.source: features` runs on."""
    from featdiff.data.feature_file import load_feature_file
    from featdiff.models.encoders import save_encoder
    from featdiff.models.resnet_cifar import resnet32

    root = write_folder(tmp_path / "pets")
    save_encoder(resnet32(3), tmp_path / "encoder.safetensors")
    values = {
        "name": "encode",
        "data": {"source": "folder", "root": str(root), "image_size": 16},
        "encoder": {"checkpoint": str(tmp_path / "encoder.safetensors")},
        "features": {"style": "eval"},
        "compute": {"threads": 1},
    }
    config = tmp_path / "encode.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "pets.safetensors"
    encoded = featdiff(tmp_path, "encode", str(config), str(out))
    assert encoded.returncode == 0, encoded.stderr
    file = load_feature_file(out)
    assert file.class_names == ("cat", "dog", "eel") and file.feature_dim == 64 and len(file.train_labels) == 35
    run = {
        "method": "fc_retrain",
        "data": {"source": "features", "features": str(out)},
        "classifier": {"epochs": 5},
        "compute": {"threads": 1},
    }
    config.write_text(yaml.safe_dump(run))
    result = featdiff(tmp_path, "run", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"] == "features:pets"
