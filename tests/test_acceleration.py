import pytest
import torch

from featdiff.config import ComputeConfig
from featdiff.models.resnet_cifar import resnet32
from featdiff.training.acceleration import accelerated, speed_settings


@pytest.fixture
def encoder_and_images():
    torch.manual_seed(0)
    return resnet32(10).eval(), torch.randn(4, 3, 32, 32)


def test_speed_settings_run_bf16_channels_last_and_are_undone(encoder_and_images):
    encoder, images = encoder_and_images
    with torch.no_grad():
        reference = encoder(images)
    with speed_settings(encoder, ComputeConfig(channels_last=True, bf16_autocast=True), "cpu"):
        assert encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        fast = encoder(images)
        fast.sum().backward()
        assert fast.dtype == torch.float32
        assert encoder.conv1.weight.grad.dtype == torch.float32
        # bf16 keeps 8 bits of mantissa: close to fp32, but not equal.
        assert not torch.equal(fast.detach(), reference)
        torch.testing.assert_close(fast.detach(), reference, rtol=0.05, atol=0.05)
    assert "features" not in vars(encoder)
    assert encoder.conv1.weight.is_contiguous()
    with torch.no_grad():
        assert torch.equal(encoder(images), reference)


def test_accelerated_leaves_a_cpu_encoder_as_it_is(encoder_and_images):
    encoder, images = encoder_and_images
    with accelerated(encoder, ComputeConfig(), torch.device("cpu")):
        assert "features" not in vars(encoder)
        assert encoder.conv1.weight.is_contiguous()
