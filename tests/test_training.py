"""The training core: every loop resumes bit for bit from a saved TrainState, the schedules, the
optimizers, and the denoiser trainer learns."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from featdiff.config import ClassifierConfig, DiffusionConfig, EncoderConfig, FinetuneConfig
from featdiff.diffusion.sampling import SamplerSettings, sample_features
from featdiff.diffusion.schedules import make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.models.small_cnn import SmallCNN
from featdiff.seeding import initialise
from featdiff.training.classifier import WeightedFeatures, classifier_state, train_classifier, weighted_cross_entropy
from featdiff.training.denoiser import denoiser_state, train_denoiser
from featdiff.training.encoder import encoder_state, train_encoder
from featdiff.training.finetune import finetune_state, train_finetune
from featdiff.training.state import ShuffledBatches, TrainState


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


def test_shuffled_batches_cover_every_row_once_per_epoch():
    for drop_last, size, batch in ((False, 10, 4), (True, 10, 4), (True, 3, 8)):
        batches = ShuffledBatches(size, batch, torch.Generator().manual_seed(0), drop_last=drop_last)
        seen = []
        for _ in range(batches.steps_per_epoch):
            seen.append(batches.next())
            assert batches.epoch == 0
        rows = torch.cat(seen)
        assert batches.epoch_finished
        if drop_last:
            assert all(len(index) == min(batch, size) for index in seen)
            assert rows.unique().numel() == rows.numel() == (size // min(batch, size)) * min(batch, size)
        else:
            assert sorted(rows.tolist()) == list(range(size))
        batches.next()
        assert batches.epoch == 1 and batches.epoch_started


def _data(n=300, d=8, c=3):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=generator)
    features = torch.randn(n, d, generator=generator) + 2 * F.one_hot(labels, d).float()
    return WeightedFeatures(features, labels, torch.ones(n))


def _round_trip(state: dict) -> dict:
    """Through the bytes a checkpoint holds, loaded as a run would (weights_only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name


class Stop(Exception):
    pass


def _resumes_bit_for_bit(fresh_state, train, n_steps: int):
    """Train 2N steps straight; train N, save the state, load it into a fresh state, train N more.
    `train(state, until)` runs a trainer configured for 2N steps but stopped after `until`."""
    straight = fresh_state()
    train(straight, 2 * n_steps)
    first = fresh_state()
    train(first, n_steps)
    assert first.step == n_steps
    resumed = fresh_state()
    resumed.load_state_dict(_round_trip(first.state_dict()))
    train(resumed, 2 * n_steps)
    assert resumed.step == straight.step == 2 * n_steps
    _assert_same(straight.model, resumed.model)
    if straight.ema is not None:
        _assert_same(straight.ema, resumed.ema)

    def without_time(history):
        return [{k: v for k, v in entry.items() if k != "epoch_s"} for entry in history]

    assert without_time(resumed.history) == without_time(straight.history)


def _stop_at(state: TrainState, until: int, train) -> None:
    """Run a whole trainer, but stop it once `until` steps are done, as a kill would."""
    original = state.batches.next

    def next_or_stop():
        if state.step == until:
            raise Stop
        return original()

    state.batches.next = next_or_stop
    try:
        train()
    except Stop:
        pass
    finally:
        del state.batches.next


def test_classifier_learns_and_resumes_bit_for_bit_mid_epoch():
    data = _data()

    def fresh(epochs=4):
        torch.manual_seed(0)
        config = ClassifierConfig(epochs=epochs, batch_size=64, lr=1e-2)
        return classifier_state(torch.nn.Linear(8, 3), len(data), config, torch.Generator().manual_seed(1))

    def train(state, until):
        _stop_at(state, until, lambda: train_classifier(state, data, ClassifierConfig(epochs=4, batch_size=64, lr=1e-2)))

    _resumes_bit_for_bit(fresh, train, n_steps=7)  # 5 steps per epoch: N falls mid-epoch
    config = ClassifierConfig(epochs=20, batch_size=64, lr=1e-2)
    history = train_classifier(fresh(20), data, config)
    assert len(history) == 20 and history[-1] < 0.5 * history[0]


def test_train_classifier_checkpoints_resume_bit_for_bit():
    data, config = _data(), ClassifierConfig(epochs=12, batch_size=64, lr=1e-2)

    def fresh():
        torch.manual_seed(0)
        return classifier_state(torch.nn.Linear(8, 3), len(data), config, torch.Generator().manual_seed(1))

    straight = fresh()
    train_classifier(straight, data, config)
    saved = []

    def save_then_die(state):
        saved.append(_round_trip(state))
        raise Stop

    with pytest.raises(Stop):
        train_classifier(fresh(), data, config, checkpoint=save_then_die, checkpoint_every_epochs=5)
    resumed = fresh()
    resumed.load_state_dict(saved[0])
    assert resumed.step == 25
    train_classifier(resumed, data, config)
    _assert_same(straight.model, resumed.model)


def test_denoiser_resumes_bit_for_bit():
    config = DiffusionConfig(steps=22, batch_size=32, width=32, depth=1, time_dim=16)
    data = _data(n=100)
    schedule = make_schedule(config.schedule, config.num_steps)

    def fresh():
        model = FeatureDenoiser(8, 3, width=config.width, depth=config.depth, time_dim=config.time_dim)
        return denoiser_state(
            initialise(model, torch.Generator().manual_seed(0)),
            len(data),
            config,
            torch.Generator().manual_seed(2),
            draws=torch.Generator().manual_seed(3),
        )

    def train(state, until):
        _stop_at(state, until, lambda: train_denoiser(state, data.features, data.labels, schedule, config))

    _resumes_bit_for_bit(fresh, train, n_steps=11)  # 3 batches per shuffle: N falls mid-pass


def _images(n=40, classes=3):
    generator = torch.Generator().manual_seed(3)
    labels = torch.arange(n) % classes
    images = (torch.rand(n, 1, 8, 8, generator=generator) * 120 + labels[:, None, None, None] * 60).to(torch.uint8)
    return images, labels


def _identity_augment(images, generator):
    torch.randint(0, 2, (images.shape[0],), generator=generator)  # draws like a real augmentation
    return images


def _normalize(images):
    return images.float() / 255


def test_encoder_training_resumes_bit_for_bit_mid_epoch():
    images, labels = _images()
    config = EncoderConfig(epochs=4, batch_size=16, lr=0.05, warmup_epochs=1, milestones=[3])

    def fresh():
        model = initialise(SmallCNN(3, feature_dim=8), torch.Generator().manual_seed(0))
        return encoder_state(model, len(labels), config, torch.Generator().manual_seed(1))

    def train(state, until):
        _stop_at(state, until, lambda: train_encoder(state, images, labels, config, _identity_augment, _normalize))

    _resumes_bit_for_bit(fresh, train, n_steps=6)  # 3 steps per epoch; the learning rate changes per epoch


def test_finetune_resumes_bit_for_bit_mid_epoch():
    images, labels = _images()
    config = FinetuneConfig(epochs=3, batch_size=16, lr=0.05, trainable="all")

    def fresh():
        model = initialise(SmallCNN(3, feature_dim=8), torch.Generator().manual_seed(0))
        return finetune_state(model, len(labels), config, torch.Generator().manual_seed(1))

    def train(state, until):
        _stop_at(state, until, lambda: train_finetune(state, images, labels, config, _identity_augment, _normalize))

    _resumes_bit_for_bit(fresh, train, n_steps=4)  # 3 steps per epoch: N falls mid-epoch


MIX_MU = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]])
MIX_COV = torch.tensor([[[0.5, 0.3], [0.3, 0.4]], [[0.3, -0.15], [-0.15, 0.6]], [[0.6, 0.0], [0.0, 0.2]]])


def test_train_denoiser_learns_a_gaussian_mixture():
    """`train_denoiser` (the library's loop, optimizer, schedule and EMA) fits a 2-D, 3-class
    mixture with correlated classes: samples from the EMA model have each class's mean and
    covariance. ε-prediction on the linear schedule, sampled with ancestral DDPM: the combination
    with the least sampler error (the Gaussian-oracle tests measure DDIM-50's variance shrinkage),
    so the tolerances test the network, its conditioning and the loop, not the discretisation."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(2000)
    chol = torch.linalg.cholesky(MIX_COV)
    features = MIX_MU[labels] + (chol[labels] @ torch.randn(6000, 2, 1, generator=generator))[:, :, 0]
    config = DiffusionConfig(schedule="linear", steps=1500, batch_size=256, width=64, depth=2, time_dim=32, lr=2e-3, ema_decay=0.99)
    schedule = make_schedule("linear", config.num_steps)
    model = initialise(FeatureDenoiser(2, 3, width=64, depth=2, time_dim=32), torch.Generator().manual_seed(1))
    state = denoiser_state(model, len(labels), config, torch.Generator().manual_seed(2), draws=torch.Generator().manual_seed(3))
    train_denoiser(state, features, labels, schedule, config)
    y = torch.arange(3).repeat_interleave(1000)
    samples = sample_features(
        state.ema.module,
        y,
        feature_dim=2,
        schedule=schedule,
        sampler=SamplerSettings("ddpm"),
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    for c in range(3):
        x = samples[y == c].double()
        mu, cov = MIX_MU[c].double(), MIX_COV[c].double()
        # Classes are >= 2.8 apart; a sample-mean standard error is <= 0.025 (and the training
        # set's own mean is off by <= 0.02).
        assert (x.mean(0) - mu).norm() < 0.2, (c, x.mean(0), mu)
        # Whitened covariance entries have a standard error of ~0.045 at n = 1000.
        whitened = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), (x - x.mean(0)).T, upper=False)
        assert (whitened.cov() - torch.eye(2, dtype=torch.float64)).abs().max() < 0.3, (c, x.T.cov(), cov)


def test_finetune_optimizer_scales_only_the_classifier_and_freezes_early_stages():
    from featdiff.models.resnet_cifar import resnet32
    from featdiff.training.finetune import configure_trainable, finetune_lr, make_encoder_optimizer
    from featdiff.training.loop import set_learning_rate

    model = resnet32(10)
    config = FinetuneConfig(lr=0.1, classifier_lr_scale=5.0, trainable="last_stage")
    configure_trainable(model, config.trainable)
    optimizer = make_encoder_optimizer(model, config)
    state = TrainState(model, {"encoder": optimizer}, {}, ShuffledBatches(1, 1, torch.Generator()))
    set_learning_rate(state, finetune_lr(0.0, config))
    body, head = optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in body["params"]} == {id(p) for p in model.layer3.parameters()}
    assert body["lr"] == 0.1 and head["lr"] == 0.5
    set_learning_rate(state, finetune_lr(1.0, config))
    assert body["lr"] == 0.0 and head["lr"] == 0.0


def test_adam_classifier_steps_like_separate_sgd_and_adam_and_resumes():
    from featdiff.models.resnet_cifar import resnet32
    from featdiff.training.finetune import configure_trainable, make_encoder_optimizer
    from featdiff.training.loop import set_learning_rate

    torch.manual_seed(0)
    config = FinetuneConfig(lr=0.05, classifier_lr_scale=0.1, classifier_optimizer="adam", trainable="last_stage")
    model = resnet32(10)
    configure_trainable(model, config.trainable)
    reference = copy.deepcopy(model)
    optimizer = make_encoder_optimizer(model, config)
    set_learning_rate(TrainState(model, {"encoder": optimizer}, {}, ShuffledBatches(1, 1, torch.Generator())), config.lr)
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
    from featdiff.training.finetune import finetune_lr

    config = FinetuneConfig(epochs=10, lr=0.1, schedule="step", warmup_epochs=2, milestones=[6, 8])
    assert finetune_lr(fraction, config) == pytest.approx(expected)


def test_the_ema_is_torchs_averaged_model_to_the_bit_through_a_move_and_a_cast():
    """`make_ema` against `AveragedModel(multi_avg_fn=get_ema_multi_avg_fn)` itself, on a model with
    float and integer buffers (BatchNorm), over steps before and after both models are cast."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from featdiff.training.state import make_ema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    ours, reference = make_ema(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def steps(count: int, dtype: torch.dtype) -> None:
        for _ in range(count):
            loss = model(torch.randn(16, 4, dtype=dtype)).square().mean()  # train mode: BatchNorm's running stats move
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ours.update_parameters(model)
            reference.update_parameters(model)

    steps(5, torch.float32)
    for averaged in (model, ours, reference):
        averaged.double()
    steps(5, torch.float64)
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys() and int(mine["n_averaged"]) == 10
    for name in mine:
        assert mine[name].dtype == theirs[name].dtype and torch.equal(mine[name], theirs[name]), name
    assert not torch.equal(mine["module.1.running_mean"], torch.zeros(8, dtype=torch.float64))
