"""Progressive bank: FedDDPM whose auxiliary bank is refreshed from well-scored models.

Every `refresh_every` rounds the corrected model is scored: the clients' fixed-draw loss on their
real records (non-private runs) must not exceed its value at the last refresh by more than
`refresh_loss_slack`, and its filtered candidates' mean per-class Fréchet distance to the
reference moments must be at most `refresh_score_ratio` times the bank's own. If both hold, the
oldest non-anchor rows are replaced (at most `refresh_share` of the bank).
"""

from __future__ import annotations

import math

import torch
from flwr.app import RecordDict
from torch import nn

from featdiff.federated.bank import class_frechet, mean_ignoring_nan, refresh
from featdiff.federated.federation import Exchange, Federation
from featdiff.federated.server import Setup, state_of
from featdiff.federated.strategies.fedavg import Auxiliary, RoundWork
from featdiff.federated.strategies.fedddpm import FedDDPM
from featdiff.federated.task import to_record
from featdiff.generation.filter import band_weights
from featdiff.generation.pseudo import SamplerSettings
from featdiff.runs import Run
from featdiff.seeding import named_generator
from featdiff.statistics import ClassGeometry, bands, distance_ratios


class Progressive(FedDDPM):
    def __init__(self, run: Run, federation: Federation, **options) -> None:
        super().__init__(run, federation, **options)
        self.last_refresh_loss = math.inf
        """The clients' loss at the last refresh (∞ before the first: any loss is in range)."""

    def checkpoint_state(self) -> dict:
        return {"last_refresh_loss": self.last_refresh_loss}

    def restore(self, saved: dict) -> None:
        self.last_refresh_loss = saved["last_refresh_loss"]

    def server_step(self, work: RoundWork, aux: Auxiliary) -> None:
        super().server_step(work, aux)
        if work.number % self.fed.refresh_every == 0:
            self.refresh_bank(work, aux)

    def refresh_bank(self, work: RoundWork, aux: Auxiliary) -> None:
        """Score the corrected model (clients' loss on real records, candidates' per-class Fréchet
        distance to the reference moments); if both are in range, filter candidates and replace
        the oldest rows."""
        fed, model, bank, reference = self.fed, work.model, work.bank, aux.reference
        if self.private:
            fed_loss, exchange = math.nan, Exchange()
        else:
            fed_loss, exchange = self.fed_evaluate(model, aux.setup, work.sampled, work.number)
        work.up_bytes, work.down_bytes = work.up_bytes + exchange.up_bytes, work.down_bytes + exchange.down_bytes
        per_class = torch.full((self.num_classes,), int(math.ceil(fed.refresh_share * fed.aux_per_class)))
        candidates, labels = self.generator_for(model, aux.setup).generate(
            per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, f"refresh-{work.number}")
        )
        model.train()
        means, covariances, present = reference
        geometry = ClassGeometry(means.float(), torch.diagonal(covariances, dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt().float())
        band = bands(distance_ratios(candidates, labels, geometry), self.config.filter.id_edge, self.config.filter.aid_edge)
        weights, _ = band_weights(candidates, labels, geometry, self.config.filter.model_copy(update={"enabled": True}))
        kept = (weights > 0) & present[labels]
        candidate_frechet = mean_ignoring_nan(class_frechet(candidates[kept], labels[kept], *reference))
        bank_frechet = mean_ignoring_nan(class_frechet(bank.features, bank.labels, *reference))
        last = self.last_refresh_loss
        loss_ok = math.isnan(fed_loss) or fed_loss <= last * (1 + fed.refresh_loss_slack) or math.isinf(last)
        in_range = loss_ok and candidate_frechet <= fed.refresh_score_ratio * bank_frechet
        replaced = 0
        if in_range:
            work.bank, replaced = refresh(bank, candidates[kept], labels[kept], fed.refresh_share, work.number)
            if not math.isnan(fed_loss):
                self.last_refresh_loss = fed_loss
        work.entry |= {
            "fed_loss": fed_loss,
            "evaluate_errors": exchange.errors,
            "candidate_frechet": candidate_frechet,
            "ood_share": float((band == 2).float().mean()),
            "refreshed": bool(in_range),
            "replaced": replaced,
        }

    def fed_evaluate(self, model: nn.Module, setup: Setup, sampled: list[int], server_round: int) -> tuple[float, Exchange]:
        """Clients' fixed-draw loss on their real records, weighted by size: scalars only."""
        weights, scaler = to_record(state_of(model)), setup.scaler_record()
        content = {p: RecordDict({"arrays": weights, "scaler": scaler}) for p in sampled}
        exchange = self.federation.send("evaluate", content, group=f"evaluate-{server_round}")
        pairs = [(float(r["metrics"]["loss"]), float(r["metrics"]["num-examples"])) for r in exchange.replies.values()]
        total = sum(n for _, n in pairs)
        return (sum(loss * n for loss, n in pairs) / total if total else math.nan), exchange
