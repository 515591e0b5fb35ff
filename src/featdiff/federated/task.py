"""What the server app and the client app share (Flower's "task" module): the run's config and
encoded features, a client's records, the denoiser and its scaling, tensors ↔ Flower records,
and the byte count of a serialised message.

A federation is simulated from one features file: every client computes the same seeded
Dirichlet split and keeps its own share, so simulation and deployment agree without any client
seeing another's records. In a real deployment each SuperNode points at its own file.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from torch import Tensor, nn

from featdiff.config import RunConfig, load_config, private_training
from featdiff.data.feature_file import load_feature_file
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.diffusion.scaling import Standardizer
from featdiff.errors import UserError
from featdiff.federated.partition import dirichlet_partition
from featdiff.generation.pseudo import build_denoiser
from featdiff.seeding import initialise, named_generator

FEATURE_KEYS = ("train_features", "train_labels", "test_features", "test_labels")


def run_config(path: str) -> RunConfig:
    return load_config(Path(path))


def encoded_features(path: str) -> dict[str, Tensor]:
    """The features file (safetensors, no pickle), checked for its four tensors; read once per
    process unless the file changes."""
    if not path:
        raise UserError("config key 'federated.features' is empty: point it at a file written by `featdiff encode`")
    if not Path(path).is_file():
        raise UserError(f"features file {path} (federated.features) does not exist: write it with `featdiff encode CONFIG OUT`")
    stat = Path(path).stat()
    return _read_features(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _read_features(path: str, modified_ns: int, size: int) -> dict[str, Tensor]:
    """The file read and checked as `data.source: features` reads it (`featdiff.data.feature_file`:
    safetensors or .npz, any encoder), its problems named in one line."""
    try:
        file = load_feature_file(path)
    except UserError as error:
        raise UserError(f"federated.features: {str(error).removeprefix('data.features: ')}") from None
    return {key: getattr(file, key) for key in FEATURE_KEYS}


def num_classes(config: RunConfig) -> int:
    return int(encoded_features(config.federated.features)["train_labels"].max()) + 1


def partition(path: str, clients: int, alpha: float, seed: int, min_records: int) -> list[Tensor]:
    """The seeded split of the file's training rows (computed once per process and file version)."""
    stat = Path(path).stat() if Path(path).is_file() else None
    stamp = (stat.st_mtime_ns, stat.st_size) if stat else None
    return _split(path, stamp, clients, alpha, seed, min_records)


@functools.cache
def _split(path: str, stamp: tuple[int, int] | None, clients: int, alpha: float, seed: int, min_records: int) -> list[Tensor]:
    return dirichlet_partition(encoded_features(path)["train_labels"], clients, alpha, seed, min_records)


def client_records(config: RunConfig, partition_id: int, num_partitions: int) -> tuple[Tensor, Tensor]:
    """This client's training features and labels: its share of the seeded Dirichlet split."""
    federated = config.federated
    if num_partitions != federated.clients:
        raise UserError(
            f"the node says num-partitions = {num_partitions} but federated.clients = {federated.clients}: "
            "start the SuperNodes with --node-config 'partition-id=i num-partitions=N' for the config's N"
        )
    parts = partition(federated.features, federated.clients, federated.alpha, config.seed, federated.min_client_records)
    index = parts[partition_id]
    tensors = encoded_features(federated.features)
    return tensors["train_features"][index], tensors["train_labels"][index]


def records_for_training(features: Tensor, scaler: Standardizer, config: RunConfig) -> Tensor:
    """What the denoiser sees: standardised features, or (private runs) features clipped to the
    public ball of radius R first, so the scaling is fixed a priori."""
    if private_training(config):
        from featdiff.privacy.dp_promise import clip_to_norm  # here: private runs alone pay for the accountants' imports

        features = clip_to_norm(features, config.privacy.norm_bound)
    return scaler.encode(features)


def fixed_scaler(feature_dim: int, config: RunConfig) -> Standardizer:
    """dp-promise's a-priori scaling: x·√D/R, chosen without looking at any record."""
    scaler = Standardizer(feature_dim)
    scaler.std.fill_(config.privacy.norm_bound / math.sqrt(feature_dim))
    return scaler


def new_denoiser(feature_dim: int, classes: int, config: RunConfig) -> nn.Module:
    return initialise(build_denoiser(feature_dim, classes, config.diffusion), named_generator(config.seed, "federated-denoiser"))


def fixed_loss(model: nn.Module, records: Tensor, labels: Tensor, schedule, config: RunConfig, seed: int) -> tuple[float, int]:
    """The denoising loss at (t, ε) drawn from a fixed seed: the same draws every time it is asked,
    so its change between rounds is the model's, not the noise's. (mean, records)."""
    if len(labels) == 0:
        return math.nan, 0
    generator = torch.Generator().manual_seed(seed)
    diffusion = config.diffusion
    with torch.no_grad():
        objective = DenoisingObjective(schedule, diffusion.resolved_prediction(), diffusion.resolved_weighting())
        t, noise = objective.draw(len(labels), records.shape[1], generator=generator, device=records.device, dtype=records.dtype)
        losses = objective.loss(model.eval(), records, labels, t, noise)
    model.train()
    return float(losses.mean()), len(labels)


def to_record(tensors: dict[str, Tensor]) -> ArrayRecord:
    return ArrayRecord({name: value.detach().cpu().contiguous() for name, value in tensors.items()})


def from_record(record: ArrayRecord) -> dict[str, Tensor]:
    return dict(record.to_torch_state_dict())


def message_bytes(message: Message) -> int:
    """Bytes of the message's serialised content: the sum of the deflated objects of its record
    tree, what the transport must carry. The metadata (ids, addresses; ~0.2 kB) and HTTP/TLS
    framing are the transport's own and are not counted, so every transport counts the same."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message.content).values())
