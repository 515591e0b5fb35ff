"""FedDDPM+: FedAvg of the denoiser while QUICK-TEST (featdiff.federated.fedddpm) sees the
held-out auxiliary loss improve; once it stalls, one early-stopped fine-tune on the auxiliary
set, and the rounds stop (clients are asked no more)."""

from __future__ import annotations

from torch import nn

from featdiff.federated.bank import Bank
from featdiff.federated.fedddpm import learning_is_slow
from featdiff.federated.federation import Federation
from featdiff.federated.server import state_of
from featdiff.federated.strategies.fedavg import Auxiliary, FedAvg, RoundWork
from featdiff.runs import Run


class FedDDPMPlus(FedAvg):
    def __init__(self, run: Run, federation: Federation, **options) -> None:
        super().__init__(run, federation, **options)
        self.holdout_losses: list[float] = []
        """QUICK-TEST's series: the held-out loss after every aggregation so far."""

    def checkpoint_state(self) -> dict:
        return {"holdout_losses": list(self.holdout_losses)}

    def restore(self, saved: dict) -> None:
        self.holdout_losses = list(saved["holdout_losses"])

    def server_step(self, work: RoundWork, aux: Auxiliary) -> None:
        self.holdout_losses.append(work.entry["holdout_loss"])
        if learning_is_slow(self.holdout_losses, self.fed.quick_test_threshold, self.fed.quick_test_patience):
            work.entry["finetune_steps"] = self.finetune(work.model, work.bank, aux, server_round=work.number)
            work.entry["corrected_holdout_loss"] = self.held_out_loss(work.model, aux)
            work.finished = True

    def finetune(self, model: nn.Module, bank: Bank, aux: Auxiliary, *, server_round: int) -> int:
        """The one fine-tune: chunks of server steps, each followed by the held-out loss; stops
        after `finetune_patience` chunks without improvement and keeps the best weights."""
        fed = self.fed
        best, best_state, waited, steps = self.held_out_loss(model, aux), state_of(model), 0, 0
        while steps < fed.finetune_max_steps and waited < fed.finetune_patience:
            chunk = min(fed.finetune_eval_every, fed.finetune_max_steps - steps)
            self.server_steps(model, bank, aux.setup.scaler, steps=chunk, seed_name=f"finetune-round{server_round}-step{steps}")
            steps += chunk
            loss = self.held_out_loss(model, aux)
            if loss < best:
                best, best_state, waited = loss, state_of(model), 0
            else:
                waited += 1
        model.load_state_dict(best_state)
        return steps
