"""What an encoder is to the rest of featdiff, and how one is stored on disk.

Every stage after stage 1 needs only a feature map and the linear head on top of it, so ResNet-32
and the digits CNN share one small interface (`Encoder`) instead of a class hierarchy. Weights are
stored as safetensors (no pickle: a checkpoint cannot run code) under the parameter names of
LDMLR's shipped encoders, so ours and theirs load through the same function.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from featdiff.errors import UserError
from featdiff.io import atomic_save_tensors
from featdiff.models.resnet_cifar import resnet32
from featdiff.models.small_cnn import SmallCNN
from featdiff.seeding import reset_parameters


class Encoder(Protocol):
    """A classifier split into a feature map and a linear head: `forward(x) == fc(features(x))`.

    `features_ldmlr` is LDMLR's training-feature path (for ResNet-32: no stem ReLU). The
    nn.Module methods that inference relies on are listed too, so any encoder module fits.
    """

    feature_dim: int
    fc: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def features_ldmlr(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device) -> nn.Module: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def named_buffers(self) -> Iterator[tuple[str, torch.Tensor]]: ...


def resolved_architecture(dataset: str, architecture: str = "auto") -> str:
    """`architecture`, with auto made concrete: the digits CNN for digits, ResNet-32 otherwise.
    A checkpoint is loaded as the architecture a run would have trained."""
    if architecture == "auto":
        return "small_cnn" if dataset == "digits" else "resnet32"
    return architecture


def encoder_for(dataset: str, num_classes: int, in_channels: int, architecture: str = "auto") -> nn.Module:
    """The architecture featdiff trains (`resolved_architecture`), with random weights."""
    if resolved_architecture(dataset, architecture) == "small_cnn":
        return SmallCNN(num_classes, in_channels=in_channels)
    if in_channels != 3:
        raise UserError(f"ResNet-32 takes 3-channel images, these have {in_channels}; set encoder.architecture: small_cnn")
    return resnet32(num_classes)


def load_encoder(
    path: Path, num_classes: int, new_head: torch.Generator | None = None, in_channels: int = 3, architecture: str = "resnet32"
) -> nn.Module:
    """The encoder `architecture` (ResNet-32, or the digits CNN) with the weights in `path`, every
    key and shape checked (strict loading).

    With `new_head` (a generator), the checkpoint is an encoder trained on other data (a public
    one): it is loaded with its own number of classes and its classifier is replaced by a fresh,
    seeded one for `num_classes`. A silently partial load would evaluate a half-random network,
    so any missing, unexpected or mis-shaped tensor is a UserError naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"encoder file not found: {path}: set encoder.checkpoint to an existing .safetensors file")
    try:
        state = load_file(path)
    except SafetensorError as error:
        raise UserError(f"{path} is not a readable safetensors file ({error}): re-copy or re-train the encoder") from error
    classes = state["fc.weight"].shape[0] if new_head is not None and "fc.weight" in state else num_classes
    model = SmallCNN(classes, in_channels=in_channels) if architecture == "small_cnn" else resnet32(classes)
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        kind = "the digits CNN" if architecture == "small_cnn" else "a ResNet-32"
        raise UserError(
            f"{path} does not fit {kind} with {classes} classes ({problem}): "
            "use the encoder trained on this dataset, or set the dataset that matches the encoder (or encoder.public: true)"
        )
    model.load_state_dict(state, strict=True)
    if new_head is not None:
        model.fc = nn.Linear(model.feature_dim, num_classes)
        reset_parameters(model.fc, new_head)
    return model


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """The first difference in keys or shapes, in words; empty when the state dict fits."""
    missing = sorted(expected.keys() - found.keys())
    if missing:
        return f"{len(missing)} missing tensors, e.g. {missing[0]}"
    unexpected = sorted(found.keys() - expected.keys())
    if unexpected:
        return f"{len(unexpected)} unexpected tensors, e.g. {unexpected[0]}"
    for name, tensor in expected.items():
        if found[name].shape != tensor.shape:
            return f"{name} has shape {tuple(found[name].shape)}, expected {tuple(tensor.shape)}"
    return ""


def save_encoder(model: nn.Module, path: Path) -> None:
    """Write the state dict as safetensors, atomically (see `featdiff.io`): a crash never leaves half a file."""
    atomic_save_tensors(Path(path), model.state_dict())
