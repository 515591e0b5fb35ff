"""The end-to-end loop: every strategy trains, and a killed run resumes bit-identically."""

import copy
import math

import pytest
import torch

from featdiff.config import EndToEndConfig, FinetuneConfig, PseudoFilterConfig
from featdiff.diffusion.schedules import make_schedule
from featdiff.e2e.trainer import EndToEndSettings, train_end_to_end

SCHEDULE = make_schedule("cosine", 100)


def _identity_augment(images, generator):
    return images


def _setup(strategy: str, new_model, toy_batch, epochs: int = 2):
    images, labels = toy_batch
    config = EndToEndConfig(
        strategy=strategy, ge_sample_steps=2, warmup_real_epochs=0.5, ldm_only_epochs=0.5, cached_pseudo=strategy == "B"
    )
    settings = EndToEndSettings(FinetuneConfig(epochs=epochs, batch_size=8, lr=0.05, trainable="all"), config, PseudoFilterConfig())
    model = new_model(config)
    with torch.no_grad():
        features = model.encoder.eval().features(images)
    model.initialise_statistics(features, labels, torch.tensor([12, 8, 4]), config)
    return model, images, labels, settings


@pytest.mark.parametrize("strategy", ["A", "B", "C"])
def test_every_strategy_trains_all_three_parts(strategy, new_model, toy_batch):
    model, images, labels, settings = _setup(strategy, new_model, toy_batch)
    before = copy.deepcopy(model.state_dict())
    history = train_end_to_end(model, images, labels, settings, SCHEDULE, _identity_augment, lambda x: x, torch.Generator().manual_seed(0))
    assert len(history) == 2
    assert all(math.isfinite(value) for epoch in history for value in epoch.values())
    assert "ge" in history[-1] and "ldm" in history[-1]
    for part in ("encoder.body.0.weight", "encoder.fc.weight", "denoiser.input.weight", "stats.means"):
        assert not torch.equal(model.state_dict()[part], before[part]), part


class Killed(Exception):
    pass


@pytest.mark.parametrize("strategy", ["A", "B"])
def test_resume_after_a_kill_is_bit_identical(strategy, new_model, toy_batch):
    straight, images, labels, settings = _setup(strategy, new_model, toy_batch, epochs=3)
    start = copy.deepcopy(straight.state_dict())
    train_end_to_end(straight, images, labels, settings, SCHEDULE, _identity_augment, lambda x: x, torch.Generator().manual_seed(0))

    saved = []

    def save_then_die(state):
        saved.append(copy.deepcopy(state))
        raise Killed

    killed, _, _, _ = _setup(strategy, new_model, toy_batch, epochs=3)
    killed.load_state_dict(start)
    with pytest.raises(Killed):
        train_end_to_end(
            killed,
            images,
            labels,
            settings,
            SCHEDULE,
            _identity_augment,
            lambda x: x,
            torch.Generator().manual_seed(0),
            checkpoint=save_then_die,
        )
    resumed, _, _, _ = _setup(strategy, new_model, toy_batch, epochs=3)
    train_end_to_end(resumed, images, labels, settings, SCHEDULE, _identity_augment, lambda x: x, torch.Generator(), resume=saved[0])
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_new_model_does_not_depend_on_the_global_generator():
    from featdiff.config import RunConfig
    from featdiff.methods.e2e.method import new_end_to_end_model
    from featdiff.models.small_cnn import SmallCNN

    config = RunConfig()
    encoder = SmallCNN(num_classes=3, feature_dim=8)
    torch.manual_seed(1)
    first = new_end_to_end_model(config, config.e2e, encoder, 3)
    torch.rand(1000)
    second = new_end_to_end_model(config, config.e2e, encoder, 3)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert first.encoder is not encoder


def test_features_as_trained_use_train_mode_bn_on_a_copy_and_are_reproducible():
    from featdiff.config import DataConfig, FinetuneConfig
    from featdiff.data.bundle import load_dataset
    from featdiff.evaluation.inference import encode
    from featdiff.methods.e2e.method import features_as_trained
    from featdiff.models.small_cnn import SmallCNN

    bundle = load_dataset(DataConfig(dataset="digits"))
    torch.manual_seed(0)
    encoder = SmallCNN(num_classes=bundle.num_classes).eval()
    before = copy.deepcopy(encoder.state_dict())
    config = FinetuneConfig(trainable="all", batch_size=64)

    def extract():
        return features_as_trained(encoder, bundle, config, 1, torch.Generator().manual_seed(3), torch.device("cpu"))

    first, second = extract(), extract()
    assert torch.equal(first.features, second.features)
    assert torch.equal(first.labels, bundle.train.labels)
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not encoder.training
    clean = encode(encoder, bundle.train.images, bundle.mean, bundle.std, batch_size=64, device=torch.device("cpu"), progress=False)
    assert first.features.shape == clean.shape
    assert not torch.allclose(first.features, clean, atol=1e-3)
