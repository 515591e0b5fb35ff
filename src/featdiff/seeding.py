"""Reproducible randomness: one independent, named stream per use, and model initialisation from it.

Every draw comes from a generator named after its stage and its purpose ("denoiser/init",
"denoiser/data", "denoiser/diffusion", "generation/sampling"), seeded by a stable hash of the
run's seed and the name. So a model's initialisation, the order its data comes in and its
diffusion draws never share a stream; changing one stage's length never shifts the randomness of
another; a new stage needs no entry in a table, only a name no other stream uses; and nothing in
the library touches torch's global generator: a run gives the same result whatever ran before it
in the process.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn


def named_generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A named stream (a stage's initialisation or data order, a client in a round, a server
    step): seeded by a stable hash of (seed, name), so it is the same in every process and on
    every machine, and two names give independent streams."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@torch.no_grad()
def reset_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of every Linear, Conv1d/Conv2d and Embedding (without
    padding row) in a freshly built `module`, in registration order, drawn from `generator`;
    normalisation layers have no random state and are left as built.

    The draws are those `reset_parameters` makes from the global generator, in the same order,
    so a model built under `torch.manual_seed(s)` and one reset from a generator seeded with s
    hold the same weights.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        elif isinstance(layer, nn.Embedding):
            nn.init.normal_(layer.weight, generator=generator)


@torch.no_grad()
def he_normal_(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """He-normal weights for every convolution and linear layer of `module`: the initialisation
    of the CIFAR ResNets (and of featdiff's digits CNN)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, generator=generator)


def initialise(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Seeded initialisation: the default draws, then the module's own scheme (`init_weights`
    draws more from the generator, `zero_init` zeroes what starts at zero)."""
    reset_parameters(module, generator)
    if hasattr(module, "init_weights"):
        module.init_weights(generator)
    if hasattr(module, "zero_init"):
        module.zero_init()
    return module
