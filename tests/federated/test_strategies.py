"""The strategy registry: every name the config accepts has a strategy, and no more."""

import typing

from featdiff.config import FederatedConfig
from featdiff.federated.server import FederatedServer
from featdiff.federated.strategies import STRATEGIES
from featdiff.federated.strategies.fedavg import FedAvg


def test_the_registry_and_the_configs_algorithm_names_agree():
    literal = typing.get_args(FederatedConfig.model_fields["algorithm"].annotation)
    assert set(STRATEGIES) == set(literal)
    assert all(issubclass(strategy, FederatedServer) for strategy in STRATEGIES.values())
    denoisers = {name for name, strategy in STRATEGIES.items() if issubclass(strategy, FedAvg)}
    assert denoisers == {"fedavg", "fedddpm", "fedddpm_plus", "progressive"}


def test_the_old_spellings_are_read_as_fedddpm():
    assert FederatedConfig(algorithm="feddpm").algorithm == "fedddpm"
    assert FederatedConfig(algorithm="feddpm_plus").algorithm == "fedddpm_plus"
    assert FederatedConfig().algorithm == "fedddpm"
