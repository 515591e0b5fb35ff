"""A client's local update runs the training core's step: it moves the broadcast weights, is
reproducible from its seed, fits clients smaller than a batch, and FedAvg of clients learns."""

import pytest
import torch

from featdiff.config import DiffusionConfig
from featdiff.federated.aggregation import weighted_average
from featdiff.federated.client import local_update
from featdiff.federated.partition import dirichlet_partition
from featdiff.generation.pseudo import build_denoiser, schedule_for
from featdiff.seeding import initialise

CONFIG = DiffusionConfig(width=32, depth=1, time_dim=16, batch_size=64, lr=3e-3)


def clusters(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (400,), generator=generator)
    centres = 3.0 * torch.randn(4, 6, generator=generator)
    return centres[labels] + 0.3 * torch.randn(400, 6, generator=generator), labels


def fresh_model():
    return initialise(build_denoiser(6, 4, CONFIG), torch.Generator().manual_seed(0))


def test_local_update_moves_the_weights_and_is_reproducible():
    features, labels = clusters()
    schedule = schedule_for(CONFIG)
    model = fresh_model()
    broadcast = {k: v.clone() for k, v in model.state_dict().items()}
    first, loss = local_update(
        model, features, labels, schedule, CONFIG, 10, data=torch.Generator().manual_seed(5), draws=torch.Generator().manual_seed(51)
    )
    assert loss > 0 and any(not torch.equal(first[k], broadcast[k]) for k in broadcast)
    model.load_state_dict(broadcast)
    again, loss_again = local_update(
        model, features, labels, schedule, CONFIG, 10, data=torch.Generator().manual_seed(5), draws=torch.Generator().manual_seed(51)
    )
    assert all(torch.equal(first[k], again[k]) for k in first) and loss == loss_again


def test_a_client_smaller_than_a_batch_trains_and_an_empty_one_is_refused():
    features, labels = clusters()
    schedule = schedule_for(CONFIG)
    _, loss = local_update(
        fresh_model(),
        features[:5],
        labels[:5],
        schedule,
        CONFIG,
        3,
        data=torch.Generator().manual_seed(0),
        draws=torch.Generator().manual_seed(1),
    )
    assert loss > 0
    with pytest.raises(ValueError, match="without records"):
        local_update(
            fresh_model(),
            features[:0],
            labels[:0],
            schedule,
            CONFIG,
            3,
            data=torch.Generator().manual_seed(0),
            draws=torch.Generator().manual_seed(1),
        )


def test_fedavg_of_local_updates_lowers_the_loss():
    """Eight rounds over four Dirichlet clients: the last round's mean client loss is well below the first's."""
    features, labels = clusters()
    schedule = schedule_for(CONFIG)
    parts = dirichlet_partition(labels, clients=4, alpha=0.5, seed=0)
    model = fresh_model()
    round_losses = []
    for round_index in range(8):
        broadcast = {k: v.clone() for k, v in model.state_dict().items()}
        states, sizes, losses = [], [], []
        for client, part in enumerate(parts):
            model.load_state_dict(broadcast)
            data, draws = (torch.Generator().manual_seed(1000 * round_index + client + offset) for offset in (0, 500))
            state, loss = local_update(model, features[part], labels[part], schedule, CONFIG, 15, data=data, draws=draws)
            states.append(state), sizes.append(len(part)), losses.append(loss)
        model.load_state_dict(weighted_average(states, sizes))
        round_losses.append(sum(loss * size for loss, size in zip(losses, sizes, strict=True)) / sum(sizes))
    assert round_losses[-1] < 0.7 * round_losses[0]
