"""CReFF (Shang et al., IJCAI 2022): FedAvg of the head with cross-entropy, while the server
learns federated features whose per-class gradients match the clients' (featdiff.federated.creff)
and retrains a head on them after every round."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from featdiff.federated.creff import match_features
from featdiff.federated.federation import Federation
from featdiff.federated.head import train_head
from featdiff.federated.server import FederatedServer, Setup
from featdiff.runs import Run
from featdiff.seeding import named_generator


class CReFF(FederatedServer):
    def __init__(self, run: Run, federation: Federation, **options) -> None:
        super().__init__(run, federation, **options)
        per_class = self.fed.creff_features_per_class
        self.labels = torch.arange(self.num_classes).repeat_interleave(per_class)
        self.features: Tensor = torch.randn(len(self.labels), self.feature_dim, generator=named_generator(self.config.seed, "creff-init"))
        """The federated features, matched to the clients' class gradients every round."""
        self.retrained = self.new_head()
        """The head retrained on the federated features: CReFF's classifier."""

    def train(self, setup: Setup) -> dict:
        match = partial(self.match, counts=setup.counts)
        history = self.head_rounds(self.new_head(), setup, loss="ce", label="creff", class_gradients=match)
        return {"creff": self.evaluate(self.retrained, setup.counts), "head_rounds": history}

    def match(self, server_round: int, uploads: dict, *, counts: Tensor) -> dict:
        """Move the federated features towards the clients' averaged class gradients of the
        broadcast head, then retrain the head from the broadcast weights on them."""
        fed = self.fed
        global_head = self.new_head()
        global_head.load_state_dict(uploads["global"])
        present = uploads["counts"] > 0
        self.features = match_features(
            global_head, self.features, self.labels, uploads["gradients"], present, fed.creff_match_steps, fed.creff_match_lr
        )
        self.retrained.load_state_dict(uploads["global"])
        generator = named_generator(self.config.seed, f"creff-{server_round}")
        train_head(self.retrained, self.features, self.labels, self.config.classifier, generator, logit_adjusted=False)
        return {"creff_acc": self.evaluate(self.retrained, counts)["acc"]["overall"]}
