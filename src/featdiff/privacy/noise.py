"""The randomness a DP guarantee rests on: the Poisson batch masks and the Gaussian noise.

A DP claim assumes the adversary cannot predict the mechanism's noise. A run's seed is written
in its `config.yaml` (and the shipped configs use seed 0), so noise drawn from a seeded stream
can be regenerated and subtracted by anyone who knows the seed, which voids the claim. By default
every private generator here is therefore seeded from the operating system's entropy
(`secrets`), and that seed is never stored: not in the config, not in a checkpoint, not in the
results. Such a run cannot be replayed bit for bit, and a resumed run continues with fresh noise
(which the accounting allows: every step's noise is independent of every other's).

`privacy.reproducible_noise: true` seeds the two generators from the run's seed instead, each
from its own named stream, for tests and benchmarks that must be replayable; the ledger then says
that the claim does not hold against anyone who knows the seed.

Even with entropy the sampler is torch's floating-point Gaussian on a Mersenne-Twister (CPU) or
Philox (CUDA) generator seeded with 63 bits, not a discrete or cryptographically secure sampler;
Opacus's `secure_mode` (a CSPRNG and a sampler robust to floating-point attacks) is the
reference for that stronger setting.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from featdiff.config import PrivacyConfig
from featdiff.seeding import named_generator


def entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the operating system's entropy; its seed is not kept anywhere."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


@dataclass(frozen=True)
class PrivateNoise:
    """The two private generators of one training phase: `masks` draws the Poisson batches,
    `gaussian` the mechanism's Gaussian noise (DP-SGD's σ·C noise in Phase II; the forward
    diffusion draw, which is Phase I's mechanism)."""

    masks: torch.Generator
    gaussian: torch.Generator
    reproducible: bool

    def checkpointed(self) -> dict[str, torch.Generator]:
        """The generators a checkpoint may hold: the seeded ones (so a resumed replayable run stays
        bit-identical), never those seeded from entropy."""
        return {"poisson masks": self.masks, "gaussian noise": self.gaussian} if self.reproducible else {}


def private_noise(seed: int, name: str, *, reproducible: bool, device: torch.device | str = "cpu") -> PrivateNoise:
    """The private generators of the phase `name` of a run with `seed`: from the operating
    system's entropy, or (`reproducible`) from the named streams "`name`/poisson masks" and
    "`name`/gaussian noise" of the seed."""
    if reproducible:
        return PrivateNoise(
            masks=named_generator(seed, f"{name}/poisson masks", device),
            gaussian=named_generator(seed, f"{name}/gaussian noise", device),
            reproducible=True,
        )
    return PrivateNoise(masks=entropy_generator(device), gaussian=entropy_generator(device), reproducible=False)


def noise_source(privacy: PrivacyConfig, seed: int) -> str:
    """Where the run's DP noise came from, in words, and what that means for the claim."""
    if privacy.reproducible_noise:
        return (
            f"seeded from the run's seed ({seed}, recorded in config.yaml) because privacy.reproducible_noise is true: "
            "the (ε, δ) claim does not hold against anyone who knows the seed, who can regenerate and subtract the noise"
        )
    return "the operating system's entropy, never stored (a floating-point Gaussian sampler, not a discrete or secure one)"
