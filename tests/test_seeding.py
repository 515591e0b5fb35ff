"""Seeded initialisation and named streams: PyTorch's own construction-time draws are the
reference, and torch's global generator must never move."""

from collections.abc import Callable

import pytest
import torch
from torch import nn

from featdiff.models.denoiser import FeatureDenoiser
from featdiff.models.resnet_cifar import resnet32
from featdiff.models.small_cnn import SmallCNN
from featdiff.seeding import initialise, named_generator

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "denoiser": lambda: FeatureDenoiser(8, 5, width=32, depth=2, time_dim=16),
    "resnet32": lambda: resnet32(10),
    "small_cnn": lambda: SmallCNN(10),
    "small_cnn_rgb": lambda: SmallCNN(4, in_channels=3, feature_dim=16),
}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        assert torch.equal(value, state_b[name]), name


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("seed", [0, 1234])
def test_initialise_reproduces_construction_under_the_global_seed(name: str, seed: int) -> None:
    build = BUILDERS[name]
    torch.manual_seed(seed)
    reference = build()
    torch.manual_seed(seed + 1)  # another global state: the seeded copy must not depend on it
    model = build()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))
    global_state = torch.get_rng_state()
    returned = initialise(model, torch.Generator().manual_seed(seed))
    assert torch.equal(torch.get_rng_state(), global_state), "initialise moved torch's global generator"
    assert returned is model
    _assert_same_state(model, reference)


def test_initialised_denoiser_keeps_its_zero_start() -> None:
    model = FeatureDenoiser(8, 5, width=32, depth=2, time_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    initialise(model, torch.Generator().manual_seed(3))
    assert (model.output.weight == 0).all() and (model.output.bias == 0).all()
    assert all((block.fc2.weight == 0).all() and (block.fc2.bias == 0).all() for block in model.blocks)
    assert (model.input.weight != 1).all() and (model.class_emb.weight != 1).all()


def test_different_generator_seeds_give_different_weights() -> None:
    first = initialise(SmallCNN(10), torch.Generator().manual_seed(5))
    second = initialise(SmallCNN(10), torch.Generator().manual_seed(6))
    layers = [(a, b) for a, b in zip(first.modules(), second.modules(), strict=True) if isinstance(a, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 4
    for a, b in layers:  # every drawn tensor (BN's constant 1 and 0 are not drawn)
        assert all(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _stream(seed: int, name: str) -> torch.Tensor:
    return torch.rand(16, generator=named_generator(seed, name))


NAMES = ["encoder/init", "encoder/data", "denoiser/init", "denoiser/data", "denoiser/diffusion", "generation/sampling"]


def test_named_streams_differ_between_names_and_seeds_and_repeat_for_the_same_pair() -> None:
    global_state = torch.get_rng_state()
    streams = {(seed, name): _stream(seed, name) for seed in (0, 1, 2, 41) for name in NAMES}
    assert torch.equal(torch.get_rng_state(), global_state)
    first_values = {stream[0].item() for stream in streams.values()}
    assert len(first_values) == len(streams)  # no two (seed, name) pairs share a stream
    for (seed, name), stream in streams.items():
        assert torch.equal(_stream(seed, name), stream)


def test_every_stream_of_one_run_is_its_own_and_the_run_repeats(tmp_path, monkeypatch) -> None:
    """A short digits LDMLR run opens one stream per stage and purpose: the denoiser's
    initialisation, its data order and its diffusion draws (and the encoder's, the classifiers')
    never share a stream, and the same seed gives the same results."""
    import featdiff.generation.pseudo
    import featdiff.methods.stages
    import featdiff.pipeline
    from featdiff.config import config_from_dict
    from featdiff.pipeline import execute
    from featdiff.runs import Run

    opened: list[str] = []

    def recording(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        opened.append(name)
        return named_generator(seed, name, device)

    for module in (featdiff.pipeline, featdiff.methods.stages, featdiff.generation.pseudo):
        monkeypatch.setattr(module, "named_generator", recording)
    fast = {
        "encoder": {"epochs": 1, "batch_size": 64},
        "diffusion": {"steps": 20, "batch_size": 64, "width": 32, "depth": 1, "sample_steps": 5},
        "classifier": {"epochs": 2},
    }
    config = config_from_dict({"method": "ldmlr", "device": "cpu", "data": {"dataset": "digits"}, **fast})
    first = execute(Run.create(tmp_path / "first", config))
    names = list(opened)
    assert {*NAMES, "fc_retrain/data", "classifier/data"} <= set(names), names
    assert len(names) == len(set(names)), f"a stream was opened twice: {names}"
    draws = {_stream(config.seed, name)[0].item() for name in names}
    assert len(draws) == len(names)

    second = execute(Run.create(tmp_path / "second", config))
    for key in ("acc", "acc_adjusted", "controls", "pseudo_counts"):
        assert first[key] == second[key], key
