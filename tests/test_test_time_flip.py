"""`evaluation.test_time_flip`: classifiers are scored on the mean of each test image's and its
mirror image's features, checked against the encoder applied by hand; the training features and
the run's choices of what to refuse are as the docstring says."""

import dataclasses
from pathlib import Path

import pytest
import torch

from featdiff.config import FeatureConfig, config_from_dict, load_config
from featdiff.data.augment import normalize
from featdiff.data.bundle import load_dataset
from featdiff.errors import UserError
from featdiff.features import encode_dataset
from featdiff.models.small_cnn import SmallCNN

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mirrorable():
    """The digits bundle marked mirror-safe, so the extraction itself can be checked on small images."""
    bundle = load_dataset(load_config(PROJECT_ROOT / "configs" / "digits_ldmlr.yaml").data)
    return dataclasses.replace(bundle, flip=True, train_holdout=bundle.test.subset(torch.arange(len(bundle.test.labels))))


def by_hand(model: torch.nn.Module, bundle, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().features(normalize(images, bundle.mean, bundle.std))


def test_test_features_are_the_mean_of_each_image_and_its_mirror(mirrorable, tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(mirrorable.num_classes, in_channels=mirrorable.train.images.shape[1]).eval()
    cpu, config = torch.device("cpu"), FeatureConfig(style="eval")
    plain = encode_dataset(model, mirrorable, config, 0, cpu, cache=tmp_path)
    flipped = encode_dataset(model, mirrorable, config, 0, cpu, cache=tmp_path, test_time_flip=True)

    images = mirrorable.test.images
    own, mirrored = by_hand(model, mirrorable, images), by_hand(model, mirrorable, images.flip(3))
    assert not torch.allclose(own, mirrored, atol=1e-3)  # the mirror is another input, so the test can tell
    assert torch.allclose(plain.test.features, own, atol=1e-5)
    assert torch.allclose(flipped.test.features, (own + mirrored) / 2, atol=1e-5)
    assert torch.allclose(flipped.train_holdout.features, (own + mirrored) / 2, atol=1e-5)  # the holdout is scored too
    assert torch.equal(flipped.train.features, plain.train.features)  # what heads train on does not change
    assert torch.equal(flipped.test.labels, plain.test.labels)
    assert len(list((tmp_path / "features").iterdir())) == 2  # cached apart: neither setting is served the other's


def test_a_linear_head_on_flipped_features_averages_the_two_views_logits(mirrorable, tmp_path):
    torch.manual_seed(1)
    model = SmallCNN(mirrorable.num_classes, in_channels=mirrorable.train.images.shape[1]).eval()
    flipped = encode_dataset(model, mirrorable, FeatureConfig(style="eval"), 0, torch.device("cpu"), cache=tmp_path, test_time_flip=True)
    images = mirrorable.test.images
    with torch.no_grad():
        expected = (model.fc(by_hand(model, mirrorable, images)) + model.fc(by_hand(model, mirrorable, images.flip(3)))) / 2
        assert torch.allclose(model.fc(flipped.test.features), expected, atol=1e-4)


class Extracted(Exception):
    """Stops a run once its features are asked for: the flag's way in is what is checked."""


@pytest.mark.parametrize("flip", [False, True])
def test_a_run_asks_for_the_features_its_config_names(flip, tmp_path, monkeypatch, data_root):
    from featdiff import pipeline
    from featdiff.runs import Run

    asked: list[bool] = []

    def recording(*args, **kwargs):
        asked.append(kwargs["test_time_flip"])
        raise Extracted

    monkeypatch.setattr(pipeline, "encode_dataset", recording)
    config = config_from_dict(
        {
            "method": "fc_retrain",
            "device": "cpu",
            "data": {"dataset": "cifar10", "imbalance_factor": 100.0, "root": str(data_root)},
            "encoder": {"checkpoint": str(data_root / "ldmlr_resnet32_cifar10_lt_if100.safetensors")},
            "evaluation": {"test_time_flip": flip},
        }
    )
    with pytest.raises(Extracted):
        pipeline.execute(Run.create(tmp_path / "run", config))
    assert asked == [flip]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [({"dataset": "digits"}, "a mirrored digit"), ({"source": "features", "features": "f.safetensors"}, "needs images to mirror")],
)
def test_test_time_flip_is_refused_where_there_is_nothing_to_mirror(data, fragment):
    with pytest.raises(UserError) as error:
        config_from_dict({"method": "fc_retrain", "data": data, "evaluation": {"test_time_flip": True}})
    message = str(error.value)
    assert "evaluation.test_time_flip" in message and fragment in message and "\n" not in message


def test_an_image_folder_may_flip():
    config = config_from_dict(
        {"method": "fc_retrain", "data": {"source": "folder", "root": "images"}, "evaluation": {"test_time_flip": True}}
    )
    assert config.evaluation.test_time_flip
