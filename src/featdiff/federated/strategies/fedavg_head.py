"""The classifier-only baseline: FedAvg of the linear head on clients' real features, no denoiser."""

from __future__ import annotations

from featdiff.federated.server import FederatedServer, Setup


class FedAvgHead(FederatedServer):
    def train(self, setup: Setup) -> dict:
        head = self.new_head()
        history = self.head_rounds(head, setup, loss=self.fed.head_loss, label="head")
        return {"head": self.evaluate(head, setup.counts), "head_rounds": history}
