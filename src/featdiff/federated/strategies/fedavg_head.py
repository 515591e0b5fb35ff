"""The classifier-only baseline: FedAvg of the linear head on clients' real features, no denoiser.

In a private run every client trains its head by DP-SGD with the logit-adjusted loss under its
own accountant over all head rounds (`featdiff.federated.private_client`): DP-FedAvg of the head,
the private control of every private federated release.
"""

from __future__ import annotations

from featdiff.federated.server import FederatedServer, Setup


class FedAvgHead(FederatedServer):
    def train(self, setup: Setup) -> dict:
        head = self.new_head()
        history = self.head_rounds(head, setup, loss=self.fed.head_loss, label="head")
        results = {"head": self.evaluate(head, setup.counts), "head_rounds": history}
        if self.private:
            results["max_client_epsilon"] = max(entry["max_client_epsilon"] for entry in history)
        return results
