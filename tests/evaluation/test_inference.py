import copy

import numpy as np
import pytest
import torch

from featdiff.data.augment import normalize
from featdiff.evaluation.inference import encode
from featdiff.models.resnet_cifar import resnet32

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


@pytest.fixture
def images():
    return torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = resnet32(10)
    with torch.no_grad():  # give BN running statistics that differ from batch statistics
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return net


def manual_normalize(images: torch.Tensor) -> torch.Tensor:
    x = images.numpy().astype(np.float64) / 255.0
    x = (x - np.array(MEAN)[None, :, None, None]) / np.array(STD)[None, :, None, None]
    return torch.from_numpy(x).float()


def test_normalize_matches_per_channel_formula(images):
    assert torch.allclose(normalize(images, MEAN, STD), manual_normalize(images), atol=1e-6)


def test_eval_style_is_eval_mode_features_and_ignores_batching(model, images):
    model.train()
    out = encode(model, images, MEAN, STD, batch_size=5, device="cpu")
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (12, 64)
    assert model.training and all(m.training for m in model.modules())
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference.features(manual_normalize(images))
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(encode(model, images, MEAN, STD, batch_size=12, device="cpu"), out, atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_ldmlr_style_uses_batch_statistics_and_leaves_model_unchanged(model, images, training):
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = encode(model, images, MEAN, STD, batch_size=4, device="cpu", style="ldmlr")

    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    # A CPU pass runs channels-last, then restores the layout, with weights that training can still use.
    assert all(tensor.is_contiguous() and not tensor.is_inference() for tensor in after.values())
    assert all(m.training == training for m in model.modules())

    reference = copy.deepcopy(model).train()  # LDMLR: train-mode BN, no stem ReLU, batch by batch
    with torch.no_grad():
        expected = torch.cat([reference.features_ldmlr(chunk) for chunk in manual_normalize(images).split(4)])
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, encode(model, images, MEAN, STD, device="cpu"), atol=1e-3)


def test_augment_sees_uint8_batches_before_normalisation(model, images):
    seen = []

    def flip(batch: torch.Tensor) -> torch.Tensor:
        seen.append((batch.dtype, batch.shape[0]))
        return batch.flip(-1)

    out = encode(model, images, MEAN, STD, batch_size=5, device="cpu", augment=flip)
    assert seen == [(torch.uint8, 5), (torch.uint8, 5), (torch.uint8, 2)]
    assert torch.allclose(out, encode(model, images.flip(-1), MEAN, STD, device="cpu"), atol=1e-5)
