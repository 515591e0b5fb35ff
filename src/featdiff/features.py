"""Feature vectors of a frozen encoder, extracted once and cached.

The cache key is a hash of the encoder's weights, the images, and the extraction settings, so a
cached file can never be served for a different encoder or split, and a benchmark that evaluates
several methods on one encoder extracts its features only once.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from featdiff.config import FeatureConfig
from featdiff.data.bundle import DatasetBundle
from featdiff.data.imageset import ImageSet
from featdiff.evaluation.inference import encode
from featdiff.io import TENSOR_READ_ERRORS, atomic_save_tensors, describe_error
from featdiff.paths import cache_dir

_CACHED_KEYS = ("train_x", "train_y", "test_x", "test_y")


@dataclass
class FeatureSet:
    features: torch.Tensor
    labels: torch.Tensor


@dataclass
class EncodedDataset:
    """Training features (possibly several views per image) and clean features of the other sets."""

    train: FeatureSet
    test: FeatureSet
    train_holdout: FeatureSet | None


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:32]


def encoder_fingerprint(model: nn.Module) -> bytes:
    state = model.state_dict()
    return b"".join(name.encode() + state[name].detach().cpu().contiguous().numpy().tobytes() for name in sorted(state))


def images_fingerprint(images: ImageSet) -> bytes:
    return images.images.cpu().contiguous().numpy().tobytes() + images.labels.cpu().numpy().tobytes()


def inference_batch(device: torch.device) -> int:
    """Eval-mode inference batch: on a CPU, batches of 100–250 ran 2–3× faster than 1000 here."""
    return 250 if device.type == "cpu" else 1000


def _augmenter(bundle: DatasetBundle, generator: torch.Generator):
    """One augmented view per image, LDMLR-style: 4-pixel padding on CIFAR, 1 on 8×8 digits."""
    augment = bundle.augmenter(4 if bundle.flip else 1)
    return lambda batch: augment(batch, generator)


def _encode_ldmlr_style(
    model: nn.Module, bundle: DatasetBundle, images: ImageSet, generator: torch.Generator, device: torch.device
) -> FeatureSet:
    """LDMLR's extraction: one augmented pass in shuffled batches of 64 with BN in train mode.

    BN statistics come from each batch, so the batches must be shuffled like LDMLR's DataLoader
    (the stored splits are sorted by class); the permutation is undone afterwards.
    """
    order = torch.randperm(len(images.labels), generator=generator)
    features = encode(
        model,
        images.images[order],
        bundle.mean,
        bundle.std,
        batch_size=64,
        device=device,
        style="ldmlr",
        augment=_augmenter(bundle, generator),
        progress=True,
    )
    restored = torch.empty_like(features)
    restored[order] = features
    return FeatureSet(restored, images.labels)


def _encode_views(
    model: nn.Module, bundle: DatasetBundle, images: ImageSet, config: FeatureConfig, seed: int, device: torch.device
) -> FeatureSet:
    generator = torch.Generator().manual_seed(seed)
    if config.style == "ldmlr":
        return _encode_ldmlr_style(model, bundle, images, generator, device)
    views = [_eval_features(model, bundle, images, device)]
    views += [_eval_features(model, bundle, images, device, augment=_augmenter(bundle, generator)) for _ in range(config.augmented_views)]
    return FeatureSet(torch.cat(views), images.labels.repeat(len(views)))


def _eval_features(
    model: nn.Module,
    bundle: DatasetBundle,
    images: ImageSet,
    device: torch.device,
    *,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Eval-mode features of every image, in order (of each image's `augment`ed view, if given)."""
    return encode(
        model, images.images, bundle.mean, bundle.std, batch_size=inference_batch(device), device=device, augment=augment, progress=True
    )


def mirror(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images flipped left-right."""
    return images.flip(-1)


def _encode_scored(model: nn.Module, bundle: DatasetBundle, images: ImageSet, device: torch.device, *, test_time_flip: bool) -> FeatureSet:
    """Eval-mode features of images a classifier is scored on; with `test_time_flip`, the mean of
    each image's and its mirror image's features (test-time augmentation: for a linear head, the
    mean of the two views' logits)."""
    features = _eval_features(model, bundle, images, device)
    if test_time_flip:
        features = (features + _eval_features(model, bundle, images, device, augment=mirror)) / 2
    return FeatureSet(features, images.labels)


def encode_dataset(
    model: nn.Module,
    bundle: DatasetBundle,
    config: FeatureConfig,
    seed: int,
    device: torch.device,
    cache: Path | None = None,
    *,
    test_time_flip: bool = False,
) -> EncodedDataset:
    """Extract (or load from the cache) the training, train-holdout and test features.

    `config` says how the training features are taken; the test and train-holdout features, which
    classifiers are scored on, are always clean eval-mode features, averaged with their mirror
    images' under `test_time_flip` (`evaluation.test_time_flip`)."""
    key = _digest(
        encoder_fingerprint(model),
        images_fingerprint(bundle.train),
        images_fingerprint(bundle.test),
        f"{config.style}|{config.augmented_views}|{seed}|holdout={bundle.train_holdout is not None}|flip={test_time_flip}".encode(),
    )
    path = (cache or cache_dir()) / "features" / f"{key}.safetensors"
    stored = _read_cache(path, with_holdout=bundle.train_holdout is not None)
    if stored is None:
        train = _encode_views(model, bundle, bundle.train, config, seed, device)
        test = _encode_scored(model, bundle, bundle.test, device, test_time_flip=test_time_flip)
        stored = {"train_x": train.features, "train_y": train.labels, "test_x": test.features, "test_y": test.labels}
        if bundle.train_holdout is not None:
            holdout = _encode_scored(model, bundle, bundle.train_holdout, device, test_time_flip=test_time_flip)
            stored |= {"holdout_x": holdout.features, "holdout_y": holdout.labels}
        atomic_save_tensors(path, stored)
    holdout = FeatureSet(stored["holdout_x"], stored["holdout_y"]) if "holdout_x" in stored else None
    return EncodedDataset(
        train=FeatureSet(stored["train_x"], stored["train_y"]),
        test=FeatureSet(stored["test_x"], stored["test_y"]),
        train_holdout=holdout,
    )


def _read_cache(path: Path, with_holdout: bool) -> dict[str, torch.Tensor] | None:
    """The cached features, or None when there are none; a damaged file is deleted so it gets rebuilt.

    Cache files are written atomically, so damage means a disk problem or a hand-made copy: the
    file is only a cache, and extracting again is always right.
    """
    if not path.is_file():
        return None
    try:
        stored = load_file(path)
    except TENSOR_READ_ERRORS as error:
        problem = describe_error(error)
    else:
        needed = (*_CACHED_KEYS, "holdout_x", "holdout_y") if with_holdout else _CACHED_KEYS
        missing = [name for name in needed if name not in stored]
        if not missing and len(stored["train_x"]) == len(stored["train_y"]) and len(stored["test_x"]) == len(stored["test_y"]):
            return stored
        problem = f"missing {', '.join(missing)}" if missing else "features and labels differ in length"
    print(f"featdiff: feature cache {path} is damaged ({problem}); extracting the features again", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None
