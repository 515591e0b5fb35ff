"""FedDDPM (Peng et al., IEEE TCCN 2025): FedAvg of the denoiser, then τ server steps on the
auxiliary set after every aggregation, correcting the drift of clients' non-IID updates."""

from __future__ import annotations

from featdiff.federated.strategies.fedavg import Auxiliary, FedAvg, RoundWork


class FedDDPM(FedAvg):
    def server_step(self, work: RoundWork, aux: Auxiliary) -> None:
        if self.fed.server_steps > 0:
            self.server_steps(work.model, work.bank, aux.setup.scaler, steps=self.fed.server_steps, seed_name=f"server-round{work.number}")
            work.entry["corrected_holdout_loss"] = self.held_out_loss(work.model, aux)
