import time

import numpy as np
import pytest
import torch

from featdiff.data.augment import CIFAR_MEAN, CIFAR_STD, normalize, random_crop_flip


def random_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def explain(images: torch.Tensor, augmented: torch.Tensor, padding: int) -> np.ndarray:
    """Brute force: for each output, the (dy, dx, flipped) crops of the zero-padded input it equals."""
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    size_y, size_x = images.shape[2:]
    found = np.zeros((len(images), 2 * padding + 1, 2 * padding + 1, 2), dtype=bool)
    out = augmented.numpy()
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, :, dy : dy + size_y, dx : dx + size_x]
            found[:, dy, dx, 0] = (out == crop).all(axis=(1, 2, 3))
            found[:, dy, dx, 1] = (out == crop[..., ::-1]).all(axis=(1, 2, 3))
    return found


@pytest.mark.parametrize("padding, size", [(4, 32), (2, 8)])
def test_every_output_is_a_padded_crop_possibly_flipped(padding, size):
    images = random_images(300, size)
    augmented = random_crop_flip(images, padding, torch.Generator().manual_seed(1))
    assert augmented.dtype == torch.uint8 and augmented.shape == images.shape
    found = explain(images, augmented, padding)
    assert found.reshape(len(images), -1).any(axis=1).all()


def test_offsets_cover_the_range_and_half_the_images_flip():
    padding = 4
    images = random_images(2000)
    found = explain(images, random_crop_flip(images, padding, torch.Generator().manual_seed(2)), padding)
    assert (found.reshape(len(images), -1).sum(axis=1) == 1).all()  # random pixels: one explanation each
    image, dy, dx, flipped = np.nonzero(found)
    assert set(dy.tolist()) == set(dx.tolist()) == set(range(2 * padding + 1))
    assert abs(flipped.mean() - 0.5) < 0.05


def test_without_flip_only_the_crop_varies_and_offsets_stay_the_same():
    padding = 2
    images = random_images(400, 8)
    plain = random_crop_flip(images, padding, torch.Generator().manual_seed(5), flip=False)
    found = explain(images, plain, padding)
    assert found[..., 0].reshape(len(images), -1).any(axis=1).all()
    assert not found[..., 1].any()
    flipped = random_crop_flip(images, padding, torch.Generator().manual_seed(5))
    assert np.array_equal(np.nonzero(found[..., 0])[1:], np.nonzero(explain(images, flipped, padding).any(-1))[1:])


def test_same_seed_same_output_other_seed_other_output():
    images = random_images(64)
    first = random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    again = random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    other = random_crop_flip(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_zero_padding_leaves_a_black_border_at_the_extreme_offset():
    images = torch.full((200, 3, 8, 8), 255, dtype=torch.uint8)
    augmented = random_crop_flip(images, 2, torch.Generator().manual_seed(3))
    zeros_per_image = (augmented == 0).flatten(1).sum(dim=1)
    assert zeros_per_image.min() == 0 and zeros_per_image.max() == 3 * (8 * 8 - 6 * 6)


def test_normalize_matches_the_formula():
    images = random_images(4)
    expected = (images.numpy() / 255.0 - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]
    result = normalize(images, CIFAR_MEAN, CIFAR_STD)
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_normalize_constants_are_ldmlrs():
    np.testing.assert_allclose(np.array(CIFAR_MEAN) * 255, [125.3, 123.0, 113.9])
    np.testing.assert_allclose(np.array(CIFAR_STD) * 255, [63.0, 62.1, 66.7])


def per_image_reference(images: torch.Tensor, padding: int, seed: int) -> torch.Tensor:
    """The same augmentation by slicing one image at a time, replaying the draws in their order
    (the offsets (2, N), then the flips (N,), from one generator)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 2 * padding + 1, (2, len(images)), generator=generator)
    flips = torch.randint(0, 2, (len(images),), generator=generator).bool()
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    height, width = images.shape[2:]
    out = torch.empty_like(images)
    for i, (dy, dx, flipped) in enumerate(zip(offsets[0].tolist(), offsets[1].tolist(), flips.tolist(), strict=True)):
        crop = padded[i, :, dy : dy + height, dx : dx + width]
        out[i] = crop.flip(-1) if flipped else crop
    return out


def test_full_batch_equals_the_per_image_reference_and_reports_throughput():
    """A CIFAR-sized batch: every image is exactly the crop (and flip) its own draws ask for."""
    images = random_images(8192)
    random_crop_flip(images[:64], generator=torch.Generator().manual_seed(0))  # warm-up
    start = time.perf_counter()
    augmented = random_crop_flip(images, generator=torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - start
    print(f"random_crop_flip on {images.device}: {len(images) / elapsed:,.0f} images/s")
    assert augmented.shape == images.shape and augmented.dtype == torch.uint8
    assert torch.equal(augmented, per_image_reference(images, 4, seed=0))
