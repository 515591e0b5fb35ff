"""SmallCNN: shapes, the non-negative pooled feature, BatchNorm's two modes, seeded initialisation,
and learning."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from featdiff.data.augment import normalize
from featdiff.models.small_cnn import SmallCNN


@pytest.fixture(autouse=True)
def _single_thread():
    """Small ops only: on a shared 2-core machine a second intra-op thread mostly adds barrier
    waits, so these tests run single-threaded and restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _seeded_model(seed: int, **kwargs) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(**{"num_classes": 10, **kwargs})


@pytest.mark.parametrize("in_channels, feature_dim, size", [(1, 64, 8), (3, 16, 12), (2, 32, 7)])
def test_output_shapes(in_channels: int, feature_dim: int, size: int) -> None:
    model = _seeded_model(0, num_classes=7, in_channels=in_channels, feature_dim=feature_dim).eval()
    x = torch.randn(5, in_channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model.feature_dim == feature_dim
        assert model.features(x).shape == (5, feature_dim)
        assert model.features_ldmlr(x).shape == (5, feature_dim)
        assert model(x).shape == (5, 7)
    with pytest.raises(RuntimeError):
        model(torch.randn(5, in_channels + 1, size, size))


@pytest.mark.parametrize("train", [True, False])
def test_features_are_non_negative(train: bool) -> None:
    """Average-pooled ReLU outputs: never negative, and not all zero, in either BN mode."""
    model = _seeded_model(2).train(train)
    x = 3 * torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(3)) - 1
    with torch.no_grad():
        features = model.features(x)
    assert (features >= 0).all()
    assert (features > 0).float().mean() > 0.5


def test_batchnorm_train_and_eval_modes_differ() -> None:
    """Train mode normalises by the batch's statistics (a sample's output depends on its batch
    mates) and updates the running statistics; eval mode uses the running statistics (a sample's
    output is its own) and leaves them alone."""
    model = _seeded_model(4)
    gen = torch.Generator().manual_seed(5)
    sample, mates, others = (
        torch.randn(1, 1, 8, 8, generator=gen),
        torch.randn(7, 1, 8, 8, generator=gen),
        torch.randn(7, 1, 8, 8, generator=gen),
    )
    first = torch.cat([sample, mates])
    second = torch.cat([sample, 4 * others + 2])
    bn = model.body[0][1]

    model.train()
    before = bn.running_mean.clone()
    with torch.no_grad():
        in_first, in_second = model(first)[0], model(second)[0]
    assert (in_first - in_second).abs().max() > 1e-2
    assert not torch.equal(bn.running_mean, before) and bn.num_batches_tracked == 2

    model.eval()
    frozen = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.no_grad():
        in_first, in_second, alone = model(first)[0], model(second)[0], model(sample)[0]
    torch.testing.assert_close(in_first, in_second, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(in_first, alone, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(buffer, frozen[name]) for name, buffer in model.named_buffers())


def _initialised_weights(model: SmallCNN) -> list[torch.Tensor]:
    """What `init_weights` draws: every convolution's and linear layer's weight."""
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def test_init_weights_is_seeded_by_its_generator() -> None:
    first, second = _seeded_model(6), _seeded_model(7)  # different global draws at construction
    assert not torch.equal(_initialised_weights(first)[0], _initialised_weights(second)[0])
    first.init_weights(torch.Generator().manual_seed(8))
    second.init_weights(torch.Generator().manual_seed(8))
    for a, b in zip(_initialised_weights(first), _initialised_weights(second), strict=True):
        assert torch.equal(a, b)
    second.init_weights(torch.Generator().manual_seed(9))
    for a, b in zip(_initialised_weights(first), _initialised_weights(second), strict=True):
        assert not torch.equal(a, b)


def test_init_weights_is_he_normal() -> None:
    """Zero mean, std √(2 / fan_in) (fan_in = in_channels · 3 · 3 for a convolution)."""
    model = SmallCNN(10)
    model.init_weights(torch.Generator().manual_seed(10))
    conv = model.body[1][0].weight  # 64 x 32 x 3 x 3: 18,432 draws, std error of the std ~0.5 %
    expected_std = (2 / (32 * 9)) ** 0.5
    assert abs(conv.mean().item()) < 0.05 * expected_std
    assert abs(conv.std().item() / expected_std - 1) < 0.03


def test_a_few_sgd_steps_lower_the_loss_on_a_separable_problem() -> None:
    """Two classes, bright top half vs bright bottom half (plus noise): 20 full-batch SGD steps
    from a seeded start must cut the cross-entropy tenfold (they cut it ~200-fold)."""
    gen = torch.Generator().manual_seed(11)
    labels = torch.arange(2).repeat(16)
    top = torch.zeros(32, 1, 8, 8)
    top[:, :, :4] = 1.0
    x = torch.where(labels[:, None, None, None] == 0, top, top.flip(2)) + 0.3 * torch.randn(32, 1, 8, 8, generator=gen)
    torch.manual_seed(12)
    model = SmallCNN(2)
    model.init_weights(torch.Generator().manual_seed(13))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(model(x), labels).item()
    assert final < 0.1 * losses[0], losses


def test_trains_above_90_percent_on_sklearn_digits() -> None:
    digits = load_digits()  # 8×8 pixels with values 0..16, bundled with scikit-learn
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    mean, std = [float(x_train.float().mean() / 255)], [float(x_train.float().std() / 255)]

    model = _seeded_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs = normalize(x_train, mean, std)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for index in torch.randperm(len(inputs), generator=gen).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[index]), y_train[index]).backward()
            optimizer.step()

    model.eval()
    with torch.no_grad():
        predictions = model(normalize(x_test, mean, std)).argmax(1)
    assert (predictions == y_test).float().mean() > 0.90
