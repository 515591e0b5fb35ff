"""FedDDPM (Peng et al., IEEE TCCN 2025): FedAvg of the denoiser, then server steps on the
auxiliary set after every aggregation, correcting the drift of clients' non-IID updates.

As published the correction is τ steps every round (`federated.correction: fixed`). featdiff's
default scores it first (`scored`): fresh samples of the aggregated model and the bank are each
compared with the federation's class statistics (mean per-class Fréchet distance, no record
needed), and the correction takes round(s·τ) steps with s = clamp(1 − F_bank / F_model, 0, 1), so a
bank that is no better than the model does not pull the model towards it. The corrected model is then
scored again on the same draws (a paired comparison: the sampler's noise cancels) and kept only if it
is closer to the statistics than the aggregated model was. A bank close to the statistics is not
thereby good training data: on CIFAR-10-LT, steps on the warm-up bank move FedAvg's model away from
the statistics the bank itself matches (`benchmarks/correction_check.py`), so a correction that
makes the model worse by the server's own measure is undone (NaN counts as worse).
"""

from __future__ import annotations

import torch

from featdiff.federated.bank import class_frechet, mean_ignoring_nan
from featdiff.federated.server import state_of
from featdiff.federated.strategies.fedavg import Auxiliary, FedAvg, RoundWork
from featdiff.generation.pseudo import SamplerSettings
from featdiff.seeding import named_generator


def correction_strength(bank_frechet: float, model_frechet: float) -> float:
    """s = clamp(1 − F_bank / F_model, 0, 1): 1 for a perfect bank, 0 for one no closer than the model."""
    if not model_frechet > 0 or bank_frechet != bank_frechet:  # no model distance, or a NaN bank score
        return 0.0
    return min(1.0, max(0.0, 1.0 - bank_frechet / model_frechet))


class FedDDPM(FedAvg):
    def server_step(self, work: RoundWork, aux: Auxiliary) -> None:
        steps = self.fed.server_steps
        scored = self.fed.correction == "scored" and not self.private
        if steps > 0 and scored:
            model_frechet = self.model_frechet(work, aux)
            bank_frechet = mean_ignoring_nan(class_frechet(work.bank.features, work.bank.labels, *aux.reference))
            strength = correction_strength(bank_frechet, model_frechet)
            steps = round(strength * steps)
            work.entry |= {"model_frechet": model_frechet, "correction_strength": strength}
        work.entry["correction_steps"] = steps
        if steps > 0:
            aggregated = state_of(work.model)
            self.server_steps(work.model, work.bank, aux.setup.scaler, steps=steps, seed_name=f"server-round{work.number}")
            if scored:
                corrected_frechet = self.model_frechet(work, aux)  # the same draws as the aggregated model's score
                kept = corrected_frechet <= work.entry["model_frechet"]
                if not kept:
                    work.model.load_state_dict(aggregated)
                work.entry |= {"corrected_frechet": corrected_frechet, "correction_kept": kept}
            work.entry["corrected_holdout_loss"] = self.held_out_loss(work.model, aux)

    def model_frechet(self, work: RoundWork, aux: Auxiliary) -> float:
        """Mean per-class Fréchet distance of fresh samples of the aggregated model (as many per
        class as the bank holds) to the federation's class statistics."""
        per_class = torch.bincount(work.bank.labels, minlength=self.num_classes)
        samples, labels = self.generator_for(work.model, aux.setup).generate(
            per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, f"model-score-{work.number}")
        )
        work.model.train()
        return mean_ignoring_nan(class_frechet(samples, labels, *aux.reference))
