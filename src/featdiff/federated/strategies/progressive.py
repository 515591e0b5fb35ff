"""Progressive bank: FedDDPM whose auxiliary bank is refreshed from the improving global model.

Every `refresh_every` rounds, after the (scored) correction, the server draws fresh candidates
from the corrected model, drops those the AID/OOD filter calls out of distribution (radii from
the federation's statistics), and scores candidates and bank per class by their Fréchet distance
to the federation's class statistics (computed from the setup's sufficient statistics: no record
is seen, no byte is spent). A class whose candidates are closer than `refresh_score_ratio` times
its bank rows gets them in place of its worst-scored non-anchor rows (farthest from the class
mean, in units of its RMS radius), at most `refresh_share` of the class. With
`refresh_loss_check` the sampled clients' fixed-draw loss on their real records must also stay in
range (one more broadcast). Logged every refresh: the classes refreshed, the share replaced, the
candidates' OOD share; every round: the bank's Fréchet distance and age.
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
        """Score candidates of the corrected model and the bank class by class against the
        reference statistics; replace the worst rows of every class whose candidates are closer."""
        fed, model, bank, reference = self.fed, work.model, work.bank, aux.reference
        fed_loss, exchange = math.nan, Exchange()
        if fed.refresh_loss_check and not self.private:
            fed_loss, exchange = self.fed_evaluate(model, aux.setup, work.sampled, work.number)
        work.up_bytes, work.down_bytes = work.up_bytes + exchange.up_bytes, work.down_bytes + exchange.down_bytes
        per_class = torch.bincount(bank.labels, minlength=self.num_classes)
        candidates, labels = self.generator_for(model, aux.setup).generate(
            per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, f"refresh-{work.number}")
        )
        model.train()
        means, covariances, present = reference
        geometry = ClassGeometry(means.float(), torch.diagonal(covariances, dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt().float())
        band = bands(distance_ratios(candidates, labels, geometry), self.config.filter.id_edge, self.config.filter.aid_edge)
        weights, _ = band_weights(candidates, labels, geometry, self.config.filter.model_copy(update={"enabled": True}))
        kept = (weights > 0) & present[labels]
        candidate_frechet = class_frechet(candidates[kept], labels[kept], *reference)
        bank_frechet = class_frechet(bank.features, bank.labels, *reference)
        better = (candidate_frechet < fed.refresh_score_ratio * bank_frechet).nan_to_num(nan=0.0).bool()
        last = self.last_refresh_loss
        loss_ok = math.isnan(fed_loss) or math.isinf(last) or fed_loss <= last * (1 + fed.refresh_loss_slack)
        admitted = kept & better[labels] & loss_ok
        replaced = 0
        if bool(admitted.any()):
            scores = distance_ratios(bank.features, bank.labels, geometry)
            work.bank, replaced = refresh(bank, candidates[admitted], labels[admitted], fed.refresh_share, work.number, scores=scores)
            if not math.isnan(fed_loss):
                self.last_refresh_loss = fed_loss
        work.entry |= {
            "fed_loss": fed_loss,
            "evaluate_errors": exchange.errors,
            "candidate_frechet": mean_ignoring_nan(candidate_frechet),
            "classes_refreshed": int(labels[admitted].unique().numel()) if replaced else 0,
            "ood_share": float((band == 2).float().mean()),
            "refreshed": replaced > 0,
            "replaced": replaced,
            "replaced_share": replaced / len(bank.labels),
        }

    def fed_evaluate(self, model: nn.Module, setup: Setup, sampled: list[int], server_round: int) -> tuple[float, Exchange]:
        """Clients' fixed-draw loss on their real records, weighted by size: scalars only."""
        weights, scaler = to_record(state_of(model)), setup.scaler_record()
        content = {p: RecordDict({"arrays": weights, "scaler": scaler}) for p in sampled}
        exchange = self.federation.send("evaluate", content, group=f"evaluate-{server_round}")
        pairs = [(float(r["metrics"]["loss"]), float(r["metrics"]["num-examples"])) for r in exchange.replies.values()]
        total = sum(n for _, n in pairs)
        return (sum(loss * n for loss, n in pairs) / total if total else math.nan), exchange
