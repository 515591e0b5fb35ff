import copy

import pytest
import torch
import torch.nn.functional as F

from featdiff.config import ClassifierConfig, DiffusionConfig
from featdiff.diffusion.schedules import make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.training.classifier import (
    WeightedFeatures,
    train_classifier,
    weighted_cross_entropy,
)
from featdiff.training.denoiser import train_denoiser


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    weights = torch.tensor([1.0, 0.5, 0.25])
    by_hand = [
        -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1)),
        -torch.log(torch.exp(torch.tensor(1.0)) / (1 + torch.exp(torch.tensor(1.0)))),
        -torch.log(torch.tensor(0.5)),
    ]
    expected = (by_hand[0] * 1.0 + by_hand[1] * 0.5 + by_hand[2] * 0.25) / 1.75
    assert torch.allclose(weighted_cross_entropy(logits, labels, weights), expected)
    assert torch.allclose(weighted_cross_entropy(logits, labels, torch.ones(3)), F.cross_entropy(logits, labels))


def _data(n=300, d=8, c=3):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=generator)
    features = torch.randn(n, d, generator=generator) + 2 * F.one_hot(labels, d).float()
    return WeightedFeatures(features, labels, torch.ones(n))


def test_classifier_learns_and_resume_is_bit_identical():
    data, config = _data(), ClassifierConfig(epochs=20, batch_size=64, lr=1e-2)
    torch.manual_seed(0)
    straight = torch.nn.Linear(8, 3)
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    history = train_classifier(straight, data, config, torch.Generator().manual_seed(1))
    assert history[-1] < 0.5 * history[0]

    saved = []
    interrupted = torch.nn.Linear(8, 3)
    interrupted.load_state_dict(start)
    train_classifier(
        interrupted,
        data,
        ClassifierConfig(epochs=10, batch_size=64, lr=1e-2),
        torch.Generator().manual_seed(1),
        checkpoint=lambda state: saved.append(copy.deepcopy(state)),
        checkpoint_every=5,
    )
    resumed = torch.nn.Linear(8, 3)
    train_classifier(resumed, data, config, torch.Generator(), resume=saved[0])
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


class Killed(Exception):
    pass


def test_denoiser_resume_after_a_kill_is_bit_identical():
    config = DiffusionConfig(steps=30, batch_size=32, width=32, depth=1, time_dim=16)
    data = _data(n=100)
    schedule = make_schedule(config.schedule, config.num_steps)

    def fresh() -> FeatureDenoiser:
        torch.manual_seed(0)
        return FeatureDenoiser(8, 3, width=config.width, depth=config.depth, time_dim=config.time_dim)

    straight = train_denoiser(fresh(), data.features, data.labels, schedule, config, torch.Generator().manual_seed(2))

    saved = []

    def save_then_die(state: dict) -> None:
        saved.append(copy.deepcopy(state))
        raise Killed

    try:
        train_denoiser(
            fresh(),
            data.features,
            data.labels,
            schedule,
            config,
            torch.Generator().manual_seed(2),
            checkpoint=save_then_die,
            checkpoint_every=11,
        )
    except Killed:
        pass
    assert saved and saved[0]["step"] == 11
    resumed = train_denoiser(fresh(), data.features, data.labels, schedule, config, torch.Generator(), resume=saved[0])
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_finetune_optimizer_scales_only_the_classifier_and_freezes_early_stages():
    from featdiff.config import FinetuneConfig
    from featdiff.models.resnet_cifar import resnet32
    from featdiff.training.finetune import configure_trainable, make_encoder_optimizer, set_learning_rates

    model = resnet32(10)
    config = FinetuneConfig(lr=0.1, classifier_lr_scale=5.0, trainable="last_stage")
    configure_trainable(model, config.trainable)
    optimizer = make_encoder_optimizer(model, config)
    set_learning_rates(optimizer, 0.0, config)
    body, head = optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in body["params"]} == {id(p) for p in model.layer3.parameters()}
    assert body["lr"] == 0.1 and head["lr"] == 0.5
    set_learning_rates(optimizer, 1.0, config)
    assert body["lr"] == 0.0 and head["lr"] == 0.0


def test_adam_classifier_steps_like_separate_sgd_and_adam_and_resumes():
    import copy

    import torch.nn.functional as F

    from featdiff.config import FinetuneConfig
    from featdiff.models.resnet_cifar import resnet32
    from featdiff.training.finetune import configure_trainable, make_encoder_optimizer, set_learning_rates

    torch.manual_seed(0)
    config = FinetuneConfig(lr=0.05, classifier_lr_scale=0.1, classifier_optimizer="adam", trainable="last_stage")
    model = resnet32(10)
    configure_trainable(model, config.trainable)
    reference = copy.deepcopy(model)
    optimizer = make_encoder_optimizer(model, config)
    set_learning_rates(optimizer, 0.0, config)
    sgd = torch.optim.SGD(reference.layer3.parameters(), lr=0.05, momentum=config.momentum, weight_decay=config.weight_decay)
    adam = torch.optim.Adam(reference.fc.parameters(), lr=0.005, weight_decay=1e-5)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def step(net, optimizers):
        for o in optimizers:
            o.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        for o in optimizers:
            o.step()

    for _ in range(2):
        step(model, [optimizer])
        step(reference, [sgd, adam])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], msg=name)

    resumed_model = copy.deepcopy(model)
    resumed = make_encoder_optimizer(resumed_model, config)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    step(model, [optimizer])
    step(resumed_model, [resumed])
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


@pytest.mark.parametrize(
    "fraction, expected",
    [(0.0, 0.05), (0.15, 0.1), (0.55, 0.1), (0.6, 0.01), (0.79, 0.01), (0.85, 0.001), (1.0, 0.001)],
)
def test_step_schedule_warms_up_then_decays_per_epoch(fraction, expected):
    from featdiff.config import FinetuneConfig
    from featdiff.training.finetune import finetune_lr

    config = FinetuneConfig(epochs=10, lr=0.1, schedule="step", warmup_epochs=2, milestones=[6, 8])
    assert finetune_lr(fraction, config) == pytest.approx(expected)
