"""A tiny long-tailed federation: Gaussian class blobs as 'features', a small denoiser, few steps."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

CLASS_SIZES = [300, 150, 80, 40, 20]


def write_features(path: Path, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(CLASS_SIZES), 16, generator=generator) * 3

    def draw(sizes):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
        return (centers[labels] + torch.randn(len(labels), 16, generator=generator)).relu(), labels

    train, train_labels = draw(CLASS_SIZES)
    test, test_labels = draw([50] * len(CLASS_SIZES))
    save_file({"train_features": train, "train_labels": train_labels, "test_features": test, "test_labels": test_labels}, str(path))


def tiny_config(features_path: Path, **federated) -> dict:
    return {
        "name": "tiny-federation",
        "seed": 0,
        "diffusion": {"width": 32, "depth": 2, "time_dim": 16, "num_steps": 100, "sample_steps": 10, "batch_size": 64},
        "classifier": {"epochs": 5, "batch_size": 64},
        "privacy": {"split_timestep": 99, "phase_one_epochs": 0, "phase_two_epochs": 2, "phase_two_batch": 32, "delta": 1e-4},
        "federated": {
            "features": str(features_path),
            "clients": 4,
            "clients_per_round": 3,
            "rounds": 4,
            "local_steps": 5,
            "warmup_steps": 20,
            "aux_per_class": 20,
            "server_steps": 5,
            "pseudo_per_class": 40,
            "head_rounds": 2,
            "probe_every": 2,
            "probe_per_class": 10,
            "probe_epochs": 5,
            "refresh_every": 2,
            "finetune_max_steps": 20,
            "finetune_eval_every": 5,
            **federated,
        },
    }


@pytest.fixture(scope="session")
def features_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("federation") / "features.safetensors"
    write_features(path)
    return path


@pytest.fixture
def config_text(features_file):
    """A tiny federation's YAML, with `federated` keys overridden."""
    return lambda **federated: yaml.safe_dump(tiny_config(features_file, **federated))


@pytest.fixture
def make_config(tmp_path, features_file):
    def make(name: str = "config", **federated) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tiny_config(features_file, **federated)))
        return path

    return make
