"""FedAvg of the denoiser: the base of every denoiser strategy (FedDDPM, FedDDPM+, progressive).

Stages after the shared setup, each resumable:
1. warm-up: local denoisers, uploaded as weights or as pseudo-features, become the auxiliary
   set (∝ client class counts); a fixed share is QUICK-TEST's held-out slice;
2. rounds: m of N clients (seeded), weighted FedAvg (class rows by class counts), then the
   strategy's `server_step` hook (nothing here); a checkpoint after every finished round;
3. the classifier: trained on the server from the final denoiser's pseudo-features, refined by
   FedAvg of the head (non-private runs).

A subclass changes what happens after aggregation by overriding `server_step`, and keeps state
across rounds by overriding `checkpoint_state` / `restore`; the round loop is the same for all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from torch import Tensor, nn

from featdiff.config import ClassifierConfig
from featdiff.diffusion.scaling import Standardizer
from featdiff.evaluation.diagnostics import compare
from featdiff.evaluation.metrics import group_masks
from featdiff.federated.aggregation import class_row_average, weighted_average
from featdiff.federated.bank import Bank, class_frechet, mean_ignoring_nan
from featdiff.federated.client import local_update
from featdiff.federated.federation import Exchange, Federation, round_config, round_sample
from featdiff.federated.head import train_head
from featdiff.federated.server import FederatedServer, Setup, state_of
from featdiff.federated.task import fixed_loss, from_record, new_denoiser, to_record
from featdiff.federated.warmup import auxiliary_counts, reuse_warmup
from featdiff.generation.gaussian import ClassGaussian, shrink
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, schedule_for
from featdiff.progress import progress, silenced
from featdiff.runs import Run
from featdiff.seeding import named_generator
from featdiff.statistics import class_means_and_covariances

HOLDOUT_SEED = 104729
ROUNDS_CHECKPOINT = "rounds"


class Reference(NamedTuple):
    """Per-class moments a set of features is scored against (Fréchet distance per class)."""

    means: Tensor
    covariances: Tensor
    present: Tensor
    """(classes,) bool: classes with at least two records behind their moments."""


@dataclass(frozen=True)
class Auxiliary:
    """What the rounds take from the setup and the warm-up."""

    setup: Setup
    holdout: tuple[Tensor, Tensor]
    """QUICK-TEST's held-out slice of the auxiliary set (features, labels), never trained on."""
    reference: Reference


@dataclass
class RoundWork:
    """One round as `server_step` sees it: the aggregated model, the bank, the round's record."""

    number: int
    sampled: list[int]
    model: nn.Module
    bank: Bank
    entry: dict
    up_bytes: int
    down_bytes: int
    finished: bool = False
    """Set by a strategy that stops after this round (FedDDPM+ after its fine-tune)."""


def chosen_head(results: dict, candidates: tuple[str, ...]) -> str:
    """Which of the run's classifiers to report: the best on the validation part of the test set
    (τ chosen on it too), the earlier candidate on a tie, so refining the head federatedly is
    itself a choice made on validation (a stand-in for a server-side validation set)."""
    present = [name for name in candidates if name in results]
    return max(present, key=lambda name: (results[name]["tuned"]["validation"]["acc"]["overall"], -present.index(name)))


class FedAvg(FederatedServer):
    """FedAvg of the denoiser, no server correction."""

    moments = True

    def __init__(self, run: Run, federation: Federation, **options) -> None:
        super().__init__(run, federation, **options)
        self.schedule = schedule_for(self.config.diffusion)

    # Hooks.

    def server_step(self, work: RoundWork, aux: Auxiliary) -> None:
        """What the server does to the aggregated model (and the bank) before the round is
        recorded; FedAvg does nothing."""

    def checkpoint_state(self) -> dict:
        """The strategy's own state to save with every round (restored by `restore`)."""
        return {}

    def restore(self, saved: dict) -> None:
        """Take back what `checkpoint_state` saved."""

    # The stages.

    def train(self, setup: Setup) -> dict:
        warm = self.warmup(setup)
        model, history = self.rounds(setup, warm)
        per_class = torch.full((self.num_classes,), self.fed.pseudo_per_class)
        with silenced():
            pseudo, labels = self.generator_for(model, setup).generate(
                per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, "final-pseudo")
            )
            self.run.save_tensors("denoiser.safetensors", state_of(model))
            self.run.save_tensors("pseudo_features.safetensors", {"features": pseudo, "labels": labels})
            head = self.new_head()
            train_head(head, pseudo, labels, self.config.classifier, named_generator(self.config.seed, "server-head"), logit_adjusted=False)
        results = {
            "pseudo_only": self.evaluate(head, setup.counts),
            "pseudo_frechet_test": compare(self.test_features, self.test_labels, pseudo, labels, self.num_classes)["mean_frechet"],
            "rounds": history,
            "warmup": self.run.stage_info("warmup"),
        }
        refine = self.fed.head_rounds > 0 and (not self.private or self.fed.private_refine)
        if refine:
            results["head_rounds"] = self.head_rounds(head, setup, loss="logit_adjusted", label="refine")
            results["refined"] = self.evaluate(head, setup.counts)
            if self.private:  # the clients' total: the denoiser's share and the head's DP-SGD
                results["max_client_epsilon"] = max(entry["max_client_epsilon"] for entry in results["head_rounds"])
        results["chosen"] = chosen_head(results, ("pseudo_only", "refined"))
        if not self.private:
            results |= self.gaussian_stats(setup, per_class, refine=refine)
            results["gaussian_stats_chosen"] = chosen_head(results, ("gaussian_stats", "gaussian_stats_refined"))
        return results

    def gaussian_stats(self, setup: Setup, per_class: Tensor, *, refine: bool) -> dict:
        """The free control: the class Gaussian of the setup's aggregated statistics (no bytes
        beyond the setup), sampled as the denoiser is and given the same head recipe."""
        counts = setup.counts
        gaussian = ClassGaussian.of(setup.means, shrink(counts, setup.covariances, self.config.generation.shrinkage))
        pseudo, labels = gaussian.generate(per_class, named_generator(self.config.seed, "gaussian-stats-pseudo"))
        head = self.new_head()
        with silenced():
            train_head(head, pseudo, labels, self.config.classifier, named_generator(self.config.seed, "server-head"), logit_adjusted=False)
        results = {
            "gaussian_stats": self.evaluate(head, counts),
            "gaussian_stats_frechet_test": compare(self.test_features, self.test_labels, pseudo, labels, self.num_classes)["mean_frechet"],
        }
        if refine:
            results["gaussian_stats_head_rounds"] = self.head_rounds(head, setup, loss="logit_adjusted", label="gaussian-refine")
            results["gaussian_stats_refined"] = self.evaluate(head, counts)
        return results

    def generator_for(self, model: nn.Module, setup: Setup) -> FeatureGenerator:
        return FeatureGenerator(model.eval(), setup.scaler, setup.clip, self.schedule, self.config.diffusion.resolved_prediction())

    def warmup(self, setup: Setup) -> dict[str, Tensor]:
        if self.run.stage_done("warmup"):
            return self.run.load_tensors("warmup.safetensors", stage="warmup")
        if self.fed.warmup_from:
            return reuse_warmup(self.run)
        quota = auxiliary_counts(setup.client_counts, self.fed.aux_per_class)
        contents = {
            p: RecordDict(
                {
                    "scaler": setup.scaler_record(),
                    "config": ConfigRecord({"upload": self.fed.warmup_upload, "quota": quota[p].tolist()}),
                }
            )
            for p in range(self.fed.clients)
        }
        self.say(f"warm-up: {self.fed.clients} clients train local denoisers and upload {self.fed.warmup_upload}")
        started = time.perf_counter()
        with silenced():
            exchange = self.federation.send("train.warmup", contents, group="warmup", stage=True)
            self.check_answered(exchange, stage="warm-up")
            features, labels = [], []
            for p, reply in sorted(exchange.replies.items()):
                arrays = from_record(reply["arrays"])
                if self.fed.warmup_upload == "model":
                    model = new_denoiser(self.feature_dim, self.num_classes, self.config)
                    model.load_state_dict(arrays)
                    sampled, sampled_labels = self.generator_for(model, setup).generate(
                        quota[p], SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, f"warmup-sample-{p}")
                    )
                    features.append(sampled)
                    labels.append(sampled_labels)
                else:
                    features.append(arrays["features"])
                    labels.append(arrays["labels"].long())
        aux_features, aux_labels = torch.cat(features), torch.cat(labels)
        holdout = torch.rand(len(aux_labels), generator=torch.Generator().manual_seed(HOLDOUT_SEED + self.config.seed))
        warm = {"features": aux_features, "labels": aux_labels, "holdout": holdout < self.fed.quick_test_holdout}
        epsilons = [float(reply["metrics"]["epsilon"]) for reply in exchange.replies.values()]
        self.run.save_tensors("warmup.safetensors", warm)
        self.run.mark_done(
            "warmup",
            upload=self.fed.warmup_upload,
            up_bytes=exchange.up_bytes,
            down_bytes=exchange.down_bytes,
            missing=exchange.missing,
            errors=exchange.errors,
            max_client_epsilon=max(epsilons) if epsilons else None,
            seconds=time.perf_counter() - started,
        )
        return warm

    def reference(self, setup: Setup, warm: dict[str, Tensor]) -> Reference:
        """Per-class moments the bank is scored against: the federation's (aggregated statistics),
        or in a private run the warm-up auxiliary set's, which is itself private."""
        if not self.private:
            return Reference(setup.means, setup.covariances, setup.client_counts.sum(0) >= 2)
        ones = torch.ones(len(warm["labels"]), dtype=torch.float64)
        means, covariances, mass = class_means_and_covariances(warm["features"].double(), warm["labels"], ones, self.num_classes)
        return Reference(means, covariances, mass >= 2)

    def rounds(self, setup: Setup, warm: dict[str, Tensor]) -> tuple[nn.Module, list[dict]]:
        fed = self.fed
        holdout = (warm["features"][warm["holdout"]], warm["labels"][warm["holdout"]])
        aux = Auxiliary(setup, holdout, self.reference(setup, warm))
        model = new_denoiser(self.feature_dim, self.num_classes, self.config)
        saved = self.run.load_checkpoint(ROUNDS_CHECKPOINT)
        if saved is not None:
            model.load_state_dict(saved["model"])
            bank, history, finished = Bank.from_dict(saved["bank"]), saved["history"], saved["finished"]
            self.restore(saved)
            self.say(f"resuming after round {len(history)}")
        else:
            kept = ~warm["holdout"]
            bank = Bank.start(
                warm["features"][kept], warm["labels"][kept], fed.anchor_share, named_generator(self.config.seed, "bank-anchor")
            )
            history, finished = [], False
        with progress(total=fed.rounds, initial=len(history), desc=f"{fed.algorithm} rounds", unit="round") as bar:
            for server_round in range(len(history) + 1, fed.rounds + 1):
                if finished:
                    break
                with silenced():
                    work = self.round(model, bank, server_round, aux)
                bank, finished = work.bank, work.finished
                history.append(work.entry)
                self.run.log("round", **work.entry)
                checkpoint = {"model": state_of(model), "bank": bank.as_dict(), "history": history, "finished": finished}
                self.run.save_checkpoint(ROUNDS_CHECKPOINT, checkpoint | self.checkpoint_state())
                bar.update(1)
                bar.set_postfix({"held-out loss": f"{work.entry['holdout_loss']:.4f}", "failed": len(work.entry["missing"])}, refresh=False)
        return model, history

    def round(self, model: nn.Module, bank: Bank, server_round: int, aux: Auxiliary) -> RoundWork:
        fed, seed, started = self.fed, self.config.seed, time.perf_counter()
        sampled, failing = round_sample(seed, server_round, list(range(fed.clients)), fed.clients_per_round, fed.drop_rate)
        weights, scaler_record = to_record(state_of(model)), aux.setup.scaler_record()
        contents = {
            p: RecordDict({"arrays": weights, "scaler": scaler_record, "config": round_config(server_round, failing=p in failing)})
            for p in sampled
        }
        exchange = self.federation.send("train", contents, group=f"round-{server_round}")
        self.check_answered(exchange, stage=f"round {server_round}")
        entry: dict = {"round": server_round, "sampled": sampled, "missing": exchange.missing, "errors": exchange.errors}
        model.load_state_dict(self.aggregate(exchange))
        entry["client_loss"] = float(np.mean([float(r["metrics"]["loss"]) for r in exchange.replies.values()]))
        entry["holdout_loss"] = self.held_out_loss(model, aux)
        work = RoundWork(server_round, sampled, model, bank, entry, exchange.up_bytes, exchange.down_bytes)
        self.server_step(work, aux)
        reference = aux.reference
        entry["bank_frechet"] = mean_ignoring_nan(class_frechet(work.bank.features, work.bank.labels, *reference))
        entry["bank_age"] = work.bank.mean_age(server_round)
        entry |= self.row_norms(model, aux.setup.counts)
        if server_round % fed.probe_every == 0 or server_round == fed.rounds or work.finished:
            entry |= self.quick_probe(model, aux.setup, server_round)
        entry |= {"up_bytes": work.up_bytes, "down_bytes": work.down_bytes, "seconds": time.perf_counter() - started}
        return work

    # What the rounds use.

    def aggregate(self, exchange: Exchange) -> dict[str, Tensor]:
        replies = [exchange.replies[p] for p in sorted(exchange.replies)]
        states = [from_record(r["arrays"]) for r in replies]
        sizes = [float(r["metrics"]["num-examples"]) for r in replies]
        if self.fed.class_rows == "class_counts":
            counts = torch.tensor([list(r["metrics"]["class-counts"]) for r in replies], dtype=torch.float64)
            return class_row_average(states, sizes, counts)
        return weighted_average(states, sizes)

    def server_steps(self, model: nn.Module, bank: Bank, scaler: Standardizer, *, steps: int, seed_name: str) -> None:
        """`steps` steps of the denoising objective on the bank, at the server's lr and batch."""
        diffusion = self.config.diffusion.model_copy(update={"lr": self.fed.server_lr, "batch_size": self.fed.server_batch})
        records = scaler.encode(bank.features)
        seed = self.config.seed
        weights, _ = local_update(
            model,
            records,
            bank.labels,
            self.schedule,
            diffusion,
            steps,
            data=named_generator(seed, f"{seed_name}/data"),
            draws=named_generator(seed, f"{seed_name}/diffusion"),
        )
        model.load_state_dict(weights)

    def held_out_loss(self, model: nn.Module, aux: Auxiliary) -> float:
        features, labels = aux.holdout
        return fixed_loss(model, aux.setup.scaler.encode(features), labels, self.schedule, self.config, HOLDOUT_SEED)[0]

    def row_norms(self, model: nn.Module, counts: Tensor) -> dict[str, float]:
        rows = model.state_dict()["class_emb.weight"][: self.num_classes].norm(dim=1)
        masks = group_masks(counts, "shots")
        return {f"{group}_row_norm": float(rows[mask].mean()) for group, mask in masks.items() if bool(mask.any())}

    def quick_probe(self, model: nn.Module, setup: Setup, server_round: int) -> dict[str, float]:
        """A cheap view of the denoiser at this round: a small balanced sample's Fréchet distance to
        the test features, and the test accuracy of a head trained on that sample alone."""
        per_class = torch.full((self.num_classes,), self.fed.probe_per_class)
        sampled, labels = self.generator_for(model, setup).generate(
            per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, f"probe-{server_round}")
        )
        model.train()
        head = self.new_head()
        probe: ClassifierConfig = self.config.classifier.model_copy(update={"epochs": self.fed.probe_epochs})
        train_head(head, sampled, labels, probe, named_generator(self.config.seed, f"probe-head-{server_round}"), logit_adjusted=False)
        return {
            "probe_acc": self.evaluate(head, setup.counts)["acc"]["overall"],
            "probe_frechet": compare(self.test_features, self.test_labels, sampled, labels, self.num_classes)["mean_frechet"],
        }
