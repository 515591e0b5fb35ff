"""The private generators: unreplayable by default, replayable only when asked, never in a
checkpoint unless seeded; and every random role of a private run on a stream of its own."""

import torch

from featdiff.config import PrivacyConfig
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.privacy.dp_promise import initialisation_generator, phase_state, phase_two_draws, phase_two_noise
from featdiff.privacy.noise import private_noise


def draws(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(64, generator=generator)


def test_entropy_noise_differs_between_runs_with_the_same_seed():
    first, second = private_noise(0, "run", reproducible=False), private_noise(0, "run", reproducible=False)
    assert not first.reproducible and first.checkpointed() == {}
    assert not torch.equal(draws(first.gaussian), draws(second.gaussian))
    assert not torch.equal(draws(first.masks), draws(second.masks))


def test_reproducible_noise_replays_from_the_seed_on_streams_of_its_own():
    first, second = private_noise(3, "run", reproducible=True), private_noise(3, "run", reproducible=True)
    assert first.reproducible and set(first.checkpointed()) == {"poisson masks", "gaussian noise"}
    masks, gaussian = draws(first.masks), draws(first.gaussian)
    assert torch.equal(masks, draws(second.masks)) and torch.equal(gaussian, draws(second.gaussian))
    assert not torch.equal(masks, gaussian)
    assert not torch.equal(gaussian, draws(private_noise(3, "another run", reproducible=True).gaussian))
    assert not torch.equal(gaussian, draws(private_noise(4, "run", reproducible=True).gaussian))


def test_a_private_runs_streams_are_distinct():
    """Initialisation, Phase II's diffusion draws and its (seeded) masks and noise: four streams."""
    privacy = PrivacyConfig(reproducible_noise=True)
    noise = phase_two_noise(0, "ldmlr_dp", privacy, "cpu")
    streams = [initialisation_generator(0, "ldmlr_dp"), phase_two_draws(0, "ldmlr_dp", "cpu"), noise.masks, noise.gaussian]
    values = [draws(generator) for generator in streams]
    assert all(not torch.equal(values[i], values[j]) for i in range(4) for j in range(i + 1, 4))


def test_a_checkpoint_holds_no_entropy_seeded_generator():
    model = FeatureDenoiser(4, 3, width=8, depth=1, time_dim=4)
    settings = {"size": 20, "batch": 5, "lr": 1e-3, "ema_decay": 0.9}
    for reproducible, expected in ((False, {"diffusion draws"}), (True, {"diffusion draws", "poisson masks", "gaussian noise"})):
        noise = phase_two_noise(0, "ldmlr_dp", PrivacyConfig(reproducible_noise=reproducible), "cpu")
        state = phase_state(model, **settings, noise=noise, draws=phase_two_draws(0, "ldmlr_dp", "cpu"))
        assert set(state.state_dict()["generators"]) == expected
        assert state.batches.generator is noise.masks  # the Poisson masks come from the private generator
