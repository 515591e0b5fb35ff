"""The server strategies, one module per algorithm, by the name `federated.algorithm` takes.

Adding an algorithm: a module here with a subclass of `FederatedServer` (a denoiser algorithm
subclasses `FedAvg` and overrides its hooks: `server_step`, `checkpoint_state`, `restore`), its
name in `STRATEGIES`, and the name in `FederatedConfig.algorithm` (a test checks the two agree).
"""

from __future__ import annotations

from featdiff.federated.server import FederatedServer
from featdiff.federated.strategies.creff import CReFF
from featdiff.federated.strategies.fedavg import FedAvg
from featdiff.federated.strategies.fedavg_head import FedAvgHead
from featdiff.federated.strategies.fedddpm import FedDDPM
from featdiff.federated.strategies.fedddpm_plus import FedDDPMPlus
from featdiff.federated.strategies.gaussian_stats import GaussianStats
from featdiff.federated.strategies.progressive import Progressive

STRATEGIES: dict[str, type[FederatedServer]] = {
    "fedavg": FedAvg,
    "fedddpm": FedDDPM,
    "fedddpm_plus": FedDDPMPlus,
    "progressive": Progressive,
    "fedavg_head": FedAvgHead,
    "creff": CReFF,
    "gaussian_stats": GaussianStats,
}


def strategy_for(algorithm: str) -> type[FederatedServer]:
    return STRATEGIES[algorithm]
