"""The class-Gaussian control of a federation: no denoiser, only the setup's statistics.

Non-private: the clients' exact per-class sums and outer products (what every denoiser run's
setup already receives), summed. Private: every client releases its clipped sums and outer
products once by the Gaussian mechanism under its own (ε, δ) (`featdiff.federated.private_client`),
and the server sums the releases (post-processing). Either way the server builds the class
Gaussian (shrunk towards the pooled covariance, made positive semi-definite), samples
`pseudo_per_class` per class and trains the head on them alone, as the denoiser algorithms do;
a non-private run then refines it by FedAvg of the head like theirs.
"""

from __future__ import annotations

import torch

from featdiff.federated.head import train_head
from featdiff.federated.server import FederatedServer, Setup
from featdiff.federated.strategies.fedavg import chosen_head
from featdiff.generation.gaussian import ClassGaussian, nearest_psd, shrink
from featdiff.progress import silenced
from featdiff.seeding import named_generator


class GaussianStats(FederatedServer):
    moments = True
    private_moments = True

    def train(self, setup: Setup) -> dict:
        counts = setup.counts
        covariances = nearest_psd(shrink(counts.clamp_min(1), setup.covariances, self.config.generation.shrinkage))
        gaussian = ClassGaussian.of(setup.means, covariances)
        per_class = torch.full((self.num_classes,), self.fed.pseudo_per_class)
        pseudo, labels = gaussian.generate(per_class, named_generator(self.config.seed, "gaussian-stats-pseudo"))
        head = self.new_head()
        with silenced():
            train_head(head, pseudo, labels, self.config.classifier, named_generator(self.config.seed, "server-head"), logit_adjusted=False)
        results: dict = {"gaussian_stats": self.evaluate(head, counts)}
        if self.private:
            results["max_client_epsilon"] = self.run.stage_info("setup")["max_client_epsilon"]
        elif self.fed.head_rounds > 0:
            results["head_rounds"] = self.head_rounds(head, setup, loss="logit_adjusted", label="refine")
            results["gaussian_stats_refined"] = self.evaluate(head, counts)
        results["gaussian_stats_chosen"] = chosen_head(results, ("gaussian_stats", "gaussian_stats_refined"))
        return results
