"""The end-to-end loop: every strategy trains, and a killed run resumes bit-identically."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from featdiff.config import DiffusionConfig, EndToEndConfig, FinetuneConfig, PseudoFilterConfig
from featdiff.diffusion.objective import denoising_loss, draw_timesteps_and_noise
from featdiff.diffusion.schedules import make_schedule
from featdiff.methods.e2e.steps import EndToEndSettings
from featdiff.methods.e2e.trainer import end_to_end_state, train_end_to_end

SCHEDULE = make_schedule("cosine", 100)


def _identity_augment(images, generator):
    torch.rand(images.shape[0], generator=generator)  # draws like a real augmentation
    return images


def _setup(strategy: str, new_model, toy_batch, epochs: int = 2):
    images, labels = toy_batch
    config = EndToEndConfig(
        strategy=strategy, ge_sample_steps=2, warmup_real_epochs=0.5, ldm_only_epochs=0.5, cached_pseudo=strategy == "B"
    )
    finetune = FinetuneConfig(epochs=epochs, batch_size=8, lr=0.05, trainable="all")
    settings = EndToEndSettings(finetune, config, PseudoFilterConfig(), DiffusionConfig(num_steps=100), SCHEDULE)
    model = new_model(config)
    with torch.no_grad():
        features = model.encoder.eval().features(images)
    model.initialise_statistics(features, labels, torch.tensor([12, 8, 4]), config)
    state = end_to_end_state(model, len(labels), settings, torch.Generator().manual_seed(0))
    return state, images, labels, settings


def _train(state, images, labels, settings, until=None):
    return train_end_to_end(state, images, labels, settings, _identity_augment, lambda x: x, until=until)


def _fixed_ldm(model, images, labels):
    """L_LDM of the current model on the current features at fixed draws."""
    with torch.no_grad():
        scaled = model.standardizer.encode(model.encoder.eval().features(images))
        t, noise = draw_timesteps_and_noise(labels.shape[0], scaled.shape[1], 100, 8, torch.Generator().manual_seed(1))
        return float(denoising_loss(model.denoiser, scaled, labels, t, noise, SCHEDULE).mean())


@pytest.mark.parametrize("strategy", ["A", "B", "C"])
def test_every_strategy_trains_all_three_parts(strategy, new_model, toy_batch):
    state, images, labels, settings = _setup(strategy, new_model, toy_batch, epochs=8)
    model = state.model
    before = copy.deepcopy(model.state_dict())
    ldm_before = _fixed_ldm(model, images, labels)
    with torch.no_grad():
        ce_before = float(F.cross_entropy(model.encoder.eval()(images), labels))
    history = _train(state, images, labels, settings)
    assert len(history) == 8
    assert all(math.isfinite(value) for epoch in history for value in epoch.values())
    assert "ge" in history[-1] and "ldm" in history[-1]
    for part in ("encoder.body.0.weight", "encoder.fc.weight", "denoiser.input.weight", "stats.means"):
        assert not torch.equal(model.state_dict()[part], before[part]), part
    with torch.no_grad():
        ce_after = float(F.cross_entropy(model.encoder.eval()(images), labels))
    # The classes are separable: the real branch learns them; the denoiser learns the features.
    assert ce_after < 0.7 * ce_before, (ce_before, ce_after)
    assert _fixed_ldm(model, images, labels) < 0.9 * ldm_before


@pytest.mark.parametrize("strategy", ["A", "B", "C"])
def test_stopped_after_n_steps_and_resumed_equals_2n_steps(strategy, new_model, toy_batch):
    """N = 4 steps (mid-epoch: 3 steps an epoch), the state through torch.save/load, N more."""
    straight, images, labels, settings = _setup(strategy, new_model, toy_batch, epochs=3)
    start = copy.deepcopy(straight.model.state_dict())
    _train(straight, images, labels, settings, until=8)

    first, _, _, _ = _setup(strategy, new_model, toy_batch, epochs=3)
    first.model.load_state_dict(start)
    _train(first, images, labels, settings, until=4)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed, _, _, _ = _setup(strategy, new_model, toy_batch, epochs=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _train(resumed, images, labels, settings, until=8)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert [e["real"] for e in straight.history] == [e["real"] for e in resumed.history]


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
