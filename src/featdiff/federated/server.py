"""The server's side of federated LDMLR (the strategy): setup, warm-up, rounds, classifier.

`Federation` is the server's line to the clients through any Flower `Grid` (the simulation
engine's, a SuperLink's, or featdiff's in-process one): it maps nodes to partitions, counts the
bytes of every serialised message both ways, and reports who did not answer. `FederatedServer`
runs one algorithm of `federated.algorithm` on it, in stages a killed run resumes from:

1. setup: every client's per-class counts (and, non-private, sums and outer products), so the
   scaling and the Fréchet references come from the federation as a whole;
2. warm-up (denoiser algorithms): local denoisers, uploaded as weights or as pseudo-features,
   become the auxiliary set (∝ client class counts); a fixed share is QUICK-TEST's held-out slice;
3. rounds: m of N clients (seeded), weighted FedAvg (class rows by class counts), then the
   algorithm's server step; a checkpoint after every finished round;
4. the classifier: trained on the server from the final denoiser's pseudo-features, refined by
   FedAvg of the head (non-private runs); or, for the baselines, FedAvg of the head / CReFF.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import Tensor, nn

from featdiff.config import ClassifierConfig, RunConfig
from featdiff.diffusion.scaling import Standardizer
from featdiff.errors import UserError
from featdiff.evaluation.diagnostics import compare
from featdiff.evaluation.metrics import group_masks, summarize
from featdiff.federated.aggregation import class_row_average, weighted_average
from featdiff.federated.bank import Bank, class_frechet, mean_ignoring_nan, refresh
from featdiff.federated.client import local_update
from featdiff.federated.creff import average_class_gradients, match_features
from featdiff.federated.feddpm import auxiliary_counts, learning_is_slow
from featdiff.federated.head import train_head
from featdiff.federated.sufficient import SufficientStatistics
from featdiff.federated.task import (
    DENOISER_ALGORITHMS,
    encoded_features,
    fixed_loss,
    fixed_scaler,
    from_record,
    message_bytes,
    new_denoiser,
    private,
    to_record,
)
from featdiff.generation.filter import band_weights
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, schedule_for
from featdiff.runs import Run
from featdiff.seeding import named_generator, reset_parameters
from featdiff.statistics import ClassGeometry, bands, class_means_and_covariances, distance_ratios

HOLDOUT_SEED = 104729
ROUNDS_CHECKPOINT = "rounds"


@dataclass
class Exchange:
    replies: dict[int, RecordDict] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    up_bytes: int = 0
    down_bytes: int = 0


class Federation:
    """Messages to partitions, replies by partition, bytes both ways, and who was missing."""

    def __init__(self, grid: Grid, round_timeout: float | None, stage_timeout: float | None) -> None:
        self.grid, self.round_timeout, self.stage_timeout = grid, round_timeout, stage_timeout
        self.nodes: dict[int, int] = {}

    def discover(self, moments: bool) -> Exchange:
        """Ask every connected node for its class counts (and, with `moments`, its sums and outer
        products); learn which partition each node holds."""
        node_ids = sorted(self.grid.get_node_ids())
        content = RecordDict({"config": ConfigRecord({"moments": moments})})
        messages = [Message(content, node, "query.statistics", group_id="setup") for node in node_ids]
        exchange = Exchange(down_bytes=sum(message_bytes(m) for m in messages))
        for reply in self.grid.send_and_receive(messages, timeout=self.stage_timeout):
            if reply.has_error():
                continue
            partition = int(reply.content["metrics"]["partition-id"])
            self.nodes[partition] = reply.metadata.src_node_id
            exchange.replies[partition] = reply.content
            exchange.up_bytes += message_bytes(reply)
        return exchange

    def send(self, message_type: str, contents: dict[int, RecordDict], group: str, stage: bool = False) -> Exchange:
        """`stage`: the setup or warm-up's longer timeout instead of a round's."""
        messages = [Message(content, self.nodes[p], message_type, group_id=group) for p, content in sorted(contents.items())]
        exchange = Exchange(down_bytes=sum(message_bytes(m) for m in messages))
        partition_of = {node: p for p, node in self.nodes.items()}
        timeout = self.stage_timeout if stage else self.round_timeout
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            partition = partition_of.get(reply.metadata.src_node_id)
            if partition is None or reply.has_error():
                continue
            exchange.replies[partition] = reply.content
            exchange.up_bytes += message_bytes(reply)
        exchange.missing = sorted(set(contents) - set(exchange.replies))
        return exchange


WARMUP_KEYS = (
    "seed",
    "features",
    "clients",
    "alpha",
    "min_client_records",
    "warmup",
    "aux_per_class",
    "quick_test_holdout",
    "diffusion",
    "privacy",
)


def warmup_signature(config: RunConfig) -> dict:
    """Everything a warm-up's result depends on (private clients also plan for the rounds)."""
    fed = config.federated
    return {
        "seed": config.seed,
        "features": fed.features,
        "clients": fed.clients,
        "alpha": fed.alpha,
        "min_client_records": fed.min_client_records,
        "warmup": (fed.warmup_steps, fed.warmup_upload, (fed.rounds, fed.local_steps) if private(config) else None),
        "aux_per_class": fed.aux_per_class,
        "quick_test_holdout": fed.quick_test_holdout,
        "diffusion": config.diffusion.model_dump(),
        "privacy": config.privacy.model_dump(),
    }


def round_sample(seed: int, server_round: int, partitions: list[int], count: int, drop_rate: float) -> tuple[list[int], list[int]]:
    """The round's clients, and those the fault injector silences: seeded by (seed, round) only,
    so a resumed run and a deployed one draw what the simulation drew."""
    rng = np.random.default_rng([seed, 7, server_round])
    sampled = sorted(int(p) for p in rng.choice(partitions, size=min(count, len(partitions)), replace=False))
    failing = sorted(int(p) for p in rng.choice(sampled, size=round(drop_rate * len(sampled)), replace=False))
    return sampled, failing


def round_config(server_round: int, failing: bool, **extra: int | float | str | bool) -> ConfigRecord:
    return ConfigRecord({"round": server_round, "simulate-failure": failing, **extra})


def state_of(model: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class FederatedServer:
    def __init__(self, run: Run, federation: Federation, log: Callable[[str], None] = print) -> None:
        self.run, self.federation, self.say = run, federation, log
        self.config: RunConfig = run.config
        self.fed = self.config.federated
        tensors = encoded_features(self.fed.features)
        self.test_features, self.test_labels = tensors["test_features"], tensors["test_labels"]
        self.feature_dim = self.test_features.shape[1]
        self.num_classes = int(tensors["train_labels"].max()) + 1
        self.private = private(self.config)
        self.schedule = schedule_for(self.config.diffusion)

    # Stage 1: setup.

    def setup(self) -> dict[str, Tensor]:
        moments = self.fed.algorithm in DENOISER_ALGORITHMS and not self.private
        exchange = self.federation.discover(moments)
        present = sorted(exchange.replies)
        if present != list(range(self.fed.clients)):
            absent = sorted(set(range(self.fed.clients)) - set(present))
            raise UserError(
                f"{len(present)} of federated.clients = {self.fed.clients} clients answered (missing partitions {absent}): "
                "start one SuperNode per partition, with --node-config 'partition-id=i num-partitions=N'"
            )
        if self.run.stage_done("setup"):
            return self.run.load_tensors("setup.safetensors", stage="setup")
        statistics = {p: from_record(exchange.replies[p]["arrays"]) for p in present}
        counts = torch.stack([statistics[p]["counts"] for p in present]).long()
        setup = {"client_counts": counts}
        if not moments:
            scaler = fixed_scaler(self.feature_dim, self.config)
        else:
            pooled = SufficientStatistics.total([SufficientStatistics.from_dict(statistics[p]) for p in present])
            scaler = pooled.standardizer()
            setup["means"], setup["covariances"] = pooled.means_and_covariances()
            low = torch.stack([statistics[p]["minimum"] for p in present]).min(0).values
            high = torch.stack([statistics[p]["maximum"] for p in present]).max(0).values
            setup |= {"clip.low": scaler.encode(low), "clip.high": scaler.encode(high)}
        setup |= {"scaler.mean": scaler.mean, "scaler.std": scaler.std}
        self.run.save_tensors("setup.safetensors", setup)
        self.run.mark_done("setup", up_bytes=exchange.up_bytes, down_bytes=exchange.down_bytes)
        return setup

    # Stage 2: warm-up.

    def scaler(self, setup: dict[str, Tensor]) -> Standardizer:
        scaler = Standardizer(self.feature_dim)
        scaler.mean.copy_(setup["scaler.mean"])
        scaler.std.copy_(setup["scaler.std"])
        return scaler

    def scaler_record(self, setup: dict[str, Tensor]) -> ArrayRecord:
        """The scaling, and where sampling clips x̂0 (the federation's scaled per-dimension range)."""
        clip = {} if self.private else {"low": setup["clip.low"], "high": setup["clip.high"]}
        return to_record({"mean": setup["scaler.mean"], "std": setup["scaler.std"], **clip})

    def generator_for(self, model: nn.Module, scaler: Standardizer) -> FeatureGenerator:
        clip = math.sqrt(self.feature_dim) if self.private else (self.setup_tensors["clip.low"], self.setup_tensors["clip.high"])
        return FeatureGenerator(model.eval(), scaler, clip, self.schedule, self.config.diffusion.resolved_prediction())

    def reused_warmup(self) -> dict[str, Tensor]:
        """The warm-up of `federated.warmup_from`, after checking that it ran what this run would."""
        source = Run.open(Path(self.fed.warmup_from))
        if not source.stage_done("warmup"):
            raise UserError(f"federated.warmup_from = {source.directory} has no finished warm-up: point it at a run that got past it")
        theirs, ours = warmup_signature(source.config), warmup_signature(self.config)
        differences = [key for key in WARMUP_KEYS if theirs[key] != ours[key]]
        if differences:
            raise UserError(
                f"federated.warmup_from = {source.directory} ran another warm-up (it differs in {', '.join(differences)}): "
                "reuse a run with the same settings, or leave federated.warmup_from empty"
            )
        warm = source.load_tensors("warmup.safetensors", stage="warmup")
        self.run.save_tensors("warmup.safetensors", warm)
        self.run.mark_done("warmup", **source.stage_info("warmup"), reused_from=str(source.directory))
        return warm

    def warmup(self, setup: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.run.stage_done("warmup"):
            return self.run.load_tensors("warmup.safetensors", stage="warmup")
        if self.fed.warmup_from:
            return self.reused_warmup()
        quota = auxiliary_counts(setup["client_counts"], self.fed.aux_per_class)
        contents = {
            p: RecordDict(
                {
                    "scaler": self.scaler_record(setup),
                    "config": ConfigRecord({"upload": self.fed.warmup_upload, "quota": quota[p].tolist()}),
                }
            )
            for p in range(self.fed.clients)
        }
        self.say(f"warm-up: {self.fed.clients} clients train local denoisers and upload {self.fed.warmup_upload}")
        started = time.perf_counter()
        exchange = self.federation.send("train.warmup", contents, group="warmup", stage=True)
        scaler = self.scaler(setup)
        features, labels = [], []
        for p, reply in sorted(exchange.replies.items()):
            arrays = from_record(reply["arrays"])
            if self.fed.warmup_upload == "model":
                model = new_denoiser(self.feature_dim, self.num_classes, self.config)
                model.load_state_dict(arrays)
                sampled, sampled_labels = self.generator_for(model, scaler).generate(
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
            max_client_epsilon=max(epsilons) if epsilons else None,
            seconds=time.perf_counter() - started,
        )
        return warm

    # Stage 3: rounds.

    def references(self, setup: dict[str, Tensor], warm: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class moments the bank is scored against: the federation's (aggregated statistics),
        or in a private run the warm-up auxiliary set's, which is itself private."""
        if not self.private:
            present = setup["client_counts"].sum(0) >= 2
            return setup["means"], setup["covariances"], present
        ones = torch.ones(len(warm["labels"]), dtype=torch.float64)
        means, covariances, mass = class_means_and_covariances(warm["features"].double(), warm["labels"], ones, self.num_classes)
        return means, covariances, mass >= 2

    def aggregate(self, exchange: Exchange) -> dict[str, Tensor]:
        replies = [exchange.replies[p] for p in sorted(exchange.replies)]
        states = [from_record(r["arrays"]) for r in replies]
        sizes = [float(r["metrics"]["num-examples"]) for r in replies]
        if self.fed.class_rows == "class_counts":
            counts = torch.tensor([list(r["metrics"]["class-counts"]) for r in replies], dtype=torch.float64)
            return class_row_average(states, sizes, counts)
        return weighted_average(states, sizes)

    def server_steps(self, model: nn.Module, bank: Bank, scaler: Standardizer, steps: int, seed_name: str) -> None:
        diffusion = self.config.diffusion.model_copy(update={"lr": self.fed.server_lr, "batch_size": self.fed.server_batch})
        records = scaler.encode(bank.features)
        weights, _ = local_update(
            model, records, bank.labels, self.schedule, diffusion, steps, named_generator(self.config.seed, seed_name)
        )
        model.load_state_dict(weights)

    def held_out_loss(self, model: nn.Module, holdout: tuple[Tensor, Tensor], scaler: Standardizer) -> float:
        return fixed_loss(model, scaler.encode(holdout[0]), holdout[1], self.schedule, self.config, HOLDOUT_SEED)[0]

    def finetune(self, model: nn.Module, bank: Bank, holdout: tuple[Tensor, Tensor], scaler: Standardizer, server_round: int) -> int:
        """FedDDPM+'s one fine-tune: chunks of server steps, each followed by the held-out loss;
        stops after `finetune_patience` chunks without improvement and keeps the best weights."""
        best, best_state, waited, steps = self.held_out_loss(model, holdout, scaler), state_of(model), 0, 0
        while steps < self.fed.finetune_max_steps and waited < self.fed.finetune_patience:
            chunk = min(self.fed.finetune_eval_every, self.fed.finetune_max_steps - steps)
            self.server_steps(model, bank, scaler, chunk, f"finetune-round{server_round}-step{steps}")
            steps += chunk
            loss = self.held_out_loss(model, holdout, scaler)
            if loss < best:
                best, best_state, waited = loss, state_of(model), 0
            else:
                waited += 1
        model.load_state_dict(best_state)
        return steps

    def row_norms(self, model: nn.Module, counts: Tensor) -> dict[str, float]:
        rows = model.state_dict()["class_emb.weight"][: self.num_classes].norm(dim=1)
        masks = group_masks(counts, "shots")
        return {f"{group}_row_norm": float(rows[mask].mean()) for group, mask in masks.items() if bool(mask.any())}

    def quick_probe(self, model: nn.Module, scaler: Standardizer, counts: Tensor, server_round: int) -> dict[str, float]:
        """A cheap view of the denoiser at this round: a small balanced sample's Fréchet distance to
        the test features, and the test accuracy of a head trained on that sample alone."""
        per_class = torch.full((self.num_classes,), self.fed.probe_per_class)
        sampled, labels = self.generator_for(model, scaler).generate(
            per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, f"probe-{server_round}")
        )
        model.train()
        head = self.new_head()
        train_head(head, sampled, labels, self.probe_classifier(), named_generator(self.config.seed, f"probe-head-{server_round}"), False)
        return {
            "probe_acc": self.evaluate(head, counts)["acc"]["overall"],
            "probe_frechet": compare(self.test_features, self.test_labels, sampled, labels, self.num_classes)["mean_frechet"],
        }

    def probe_classifier(self) -> ClassifierConfig:
        return self.config.classifier.model_copy(update={"epochs": self.fed.probe_epochs})

    def fed_evaluate(self, model: nn.Module, setup: dict[str, Tensor], sampled: list[int], server_round: int) -> tuple[float, Exchange]:
        """Clients' fixed-draw loss on their real records, weighted by size: scalars only."""
        weights, scaler = to_record(state_of(model)), self.scaler_record(setup)
        content = {p: RecordDict({"arrays": weights, "scaler": scaler}) for p in sampled}
        exchange = self.federation.send("evaluate", content, group=f"evaluate-{server_round}")
        pairs = [(float(r["metrics"]["loss"]), float(r["metrics"]["num-examples"])) for r in exchange.replies.values()]
        total = sum(n for _, n in pairs)
        return (sum(loss * n for loss, n in pairs) / total if total else math.nan), exchange

    def denoiser_rounds(self, setup: dict[str, Tensor], warm: dict[str, Tensor]) -> tuple[nn.Module, list[dict]]:
        fed, seed = self.fed, self.config.seed
        scaler = self.scaler(setup)
        counts = setup["client_counts"].sum(0)
        holdout = (warm["features"][warm["holdout"]], warm["labels"][warm["holdout"]])
        means, covariances, present = self.references(setup, warm)
        model = new_denoiser(self.feature_dim, self.num_classes, self.config)
        saved = self.run.load_checkpoint(ROUNDS_CHECKPOINT)
        if saved is not None:
            model.load_state_dict(saved["model"])
            bank, history, finished = Bank.from_dict(saved["bank"]), saved["history"], saved["finished"]
            last_refresh_loss = saved["last_refresh_loss"]
            self.say(f"resuming after round {len(history)}")
        else:
            kept = ~warm["holdout"]
            bank = Bank.start(warm["features"][kept], warm["labels"][kept], fed.anchor_share, named_generator(seed, "bank-anchor"))
            history, finished, last_refresh_loss = [], False, math.inf
        partitions = list(range(fed.clients))
        scaler_record = self.scaler_record(setup)
        for server_round in range(len(history) + 1, fed.rounds + 1):
            if finished:
                break
            started = time.perf_counter()
            sampled, failing = round_sample(seed, server_round, partitions, fed.clients_per_round, fed.drop_rate)
            weights = to_record(state_of(model))
            contents = {
                p: RecordDict({"arrays": weights, "scaler": scaler_record, "config": round_config(server_round, p in failing)})
                for p in sampled
            }
            exchange = self.federation.send("train", contents, group=f"round-{server_round}")
            entry: dict = {"round": server_round, "sampled": sampled, "missing": exchange.missing}
            if exchange.replies:
                model.load_state_dict(self.aggregate(exchange))
                losses = [float(r["metrics"]["loss"]) for r in exchange.replies.values()]
                entry["client_loss"] = float(np.mean(losses))
            entry["holdout_loss"] = self.held_out_loss(model, holdout, scaler)
            up, down = exchange.up_bytes, exchange.down_bytes
            if fed.algorithm in ("feddpm", "progressive") and fed.server_steps > 0:
                self.server_steps(model, bank, scaler, fed.server_steps, f"server-round{server_round}")
                entry["corrected_holdout_loss"] = self.held_out_loss(model, holdout, scaler)
            if fed.algorithm == "feddpm_plus":
                slow = learning_is_slow(
                    [h["holdout_loss"] for h in history] + [entry["holdout_loss"]], fed.quick_test_threshold, fed.quick_test_patience
                )
                if slow:
                    entry["finetune_steps"] = self.finetune(model, bank, holdout, scaler, server_round)
                    entry["corrected_holdout_loss"] = self.held_out_loss(model, holdout, scaler)
                    finished = True
            if fed.algorithm == "progressive" and server_round % fed.refresh_every == 0:
                reference = (means, covariances, present)
                refresh_entry, evaluation = self.refresh_bank(model, bank, setup, reference, sampled, server_round, last_refresh_loss)
                up, down = up + evaluation.up_bytes, down + evaluation.down_bytes
                bank = refresh_entry.pop("bank")
                if refresh_entry["refreshed"] and not math.isnan(refresh_entry["fed_loss"]):
                    last_refresh_loss = refresh_entry["fed_loss"]
                entry |= refresh_entry
            entry["bank_frechet"] = mean_ignoring_nan(class_frechet(bank.features, bank.labels, means, covariances, present))
            entry["bank_age"] = bank.mean_age(server_round)
            entry |= self.row_norms(model, counts)
            if server_round % fed.probe_every == 0 or server_round == fed.rounds or finished:
                entry |= self.quick_probe(model, scaler, counts, server_round)
            entry |= {"up_bytes": up, "down_bytes": down, "seconds": time.perf_counter() - started}
            history.append(entry)
            self.run.log("round", **entry)
            self.run.save_checkpoint(
                ROUNDS_CHECKPOINT,
                {
                    "model": state_of(model),
                    "bank": bank.as_dict(),
                    "history": history,
                    "finished": finished,
                    "last_refresh_loss": last_refresh_loss,
                },
            )
            missing = f", missing {exchange.missing}" if exchange.missing else ""
            self.say(f"round {server_round}/{fed.rounds}: held-out loss {entry['holdout_loss']:.4f}{missing}")
        return model, history

    def refresh_bank(
        self,
        model: nn.Module,
        bank: Bank,
        setup: dict[str, Tensor],
        reference: tuple[Tensor, Tensor, Tensor],
        sampled: list[int],
        server_round: int,
        last_loss: float,
    ) -> tuple[dict, Exchange]:
        """Score the corrected model (clients' loss on real records, candidates' per-class Fréchet
        distance to the reference moments); if both are in range, filter candidates and replace
        the oldest rows."""
        fed, scaler = self.fed, self.scaler(setup)
        means, covariances, present = reference
        if self.private:
            fed_loss, exchange = math.nan, Exchange()
        else:
            fed_loss, exchange = self.fed_evaluate(model, setup, sampled, server_round)
        per_class = torch.full((self.num_classes,), int(math.ceil(fed.refresh_share * fed.aux_per_class)))
        candidates, labels = self.generator_for(model, scaler).generate(
            per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, f"refresh-{server_round}")
        )
        model.train()
        geometry = ClassGeometry(means.float(), torch.diagonal(covariances, dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt().float())
        band = bands(distance_ratios(candidates, labels, geometry), self.config.filter.id_edge, self.config.filter.aid_edge)
        weights, _ = band_weights(candidates, labels, geometry, self.config.filter.model_copy(update={"enabled": True}))
        kept = (weights > 0) & present[labels]
        candidate_frechet = mean_ignoring_nan(class_frechet(candidates[kept], labels[kept], means, covariances, present))
        bank_frechet = mean_ignoring_nan(class_frechet(bank.features, bank.labels, means, covariances, present))
        loss_ok = math.isnan(fed_loss) or fed_loss <= last_loss * (1 + fed.refresh_loss_slack) or math.isinf(last_loss)
        in_range = loss_ok and candidate_frechet <= fed.refresh_score_ratio * bank_frechet
        replaced = 0
        if in_range:
            bank, replaced = refresh(bank, candidates[kept], labels[kept], fed.refresh_share, server_round)
        entry = {
            "bank": bank,
            "fed_loss": fed_loss,
            "candidate_frechet": candidate_frechet,
            "ood_share": float((band == 2).float().mean()),
            "refreshed": bool(in_range),
            "replaced": replaced,
        }
        return entry, exchange

    # Stage 4: the classifier.

    def new_head(self) -> nn.Linear:
        head = nn.Linear(self.feature_dim, self.num_classes)
        reset_parameters(head, named_generator(self.config.seed, "federated-head"))
        return head

    def evaluate(self, head: nn.Module, counts: Tensor, prior: Tensor | None = None) -> dict:
        with torch.inference_mode():
            logits = head(self.test_features)
        return summarize(logits, self.test_labels, counts, prior=prior)

    def head_rounds(
        self,
        head: nn.Linear,
        setup: dict[str, Tensor],
        loss: str,
        creff: bool,
        label: str,
        on_round: Callable[[int, dict], dict] | None = None,
    ) -> list[dict]:
        """FedAvg of the linear head on clients' real features; with `creff`, clients also send
        per-class gradients of the broadcast head, which `on_round` turns into federated features."""
        fed, counts = self.fed, setup["client_counts"].sum(0)
        history = []
        for server_round in range(1, fed.head_rounds + 1):
            sampled, failing = round_sample(
                self.config.seed, 10_000 + server_round, list(range(fed.clients)), fed.clients_per_round, fed.drop_rate
            )
            weights = to_record(state_of(head))
            contents = {
                p: RecordDict({"arrays": weights, "config": round_config(server_round, p in failing, loss=loss, creff=creff)})
                for p in sampled
            }
            exchange = self.federation.send("train.head", contents, group=f"{label}-{server_round}")
            entry: dict = {"round": server_round, "sampled": sampled, "missing": exchange.missing}
            if exchange.replies:
                replies = [exchange.replies[p] for p in sorted(exchange.replies)]
                arrays = [from_record(r["arrays"]) for r in replies]
                head_states = [{k: v for k, v in a.items() if not k.startswith("creff.")} for a in arrays]
                global_state = state_of(head)
                head.load_state_dict(weighted_average(head_states, [float(r["metrics"]["num-examples"]) for r in replies]))
                if on_round is not None:
                    gradients, class_counts = average_class_gradients(
                        [a["creff.gradients"] for a in arrays], [a["creff.counts"] for a in arrays]
                    )
                    entry |= on_round(server_round, {"gradients": gradients, "counts": class_counts, "global": global_state})
            summary = self.evaluate(head, counts)
            accuracy = {"acc": summary["acc"]["overall"], "acc_adjusted": summary["acc_adjusted"]["overall"]}
            entry |= accuracy | {"up_bytes": exchange.up_bytes, "down_bytes": exchange.down_bytes}
            history.append(entry)
            self.run.log(label, **entry)
            self.say(f"{label} round {server_round}/{fed.head_rounds}: test acc {accuracy['acc']:.2f}")
        return history

    def denoiser_run(self, setup: dict[str, Tensor]) -> dict:
        warm = self.warmup(setup)
        model, history = self.denoiser_rounds(setup, warm)
        scaler, counts = self.scaler(setup), setup["client_counts"].sum(0)
        per_class = torch.full((self.num_classes,), self.fed.pseudo_per_class)
        pseudo, labels = self.generator_for(model, scaler).generate(
            per_class, SamplerSettings.of(self.config.diffusion), named_generator(self.config.seed, "final-pseudo")
        )
        self.run.save_tensors("denoiser.safetensors", state_of(model))
        self.run.save_tensors("pseudo_features.safetensors", {"features": pseudo, "labels": labels})
        head = self.new_head()
        train_head(head, pseudo, labels, self.config.classifier, named_generator(self.config.seed, "server-head"), False)
        results = {
            "pseudo_only": self.evaluate(head, counts),
            "pseudo_frechet_test": compare(self.test_features, self.test_labels, pseudo, labels, self.num_classes)["mean_frechet"],
            "rounds": history,
            "warmup": self.run.stage_info("warmup"),
        }
        if not self.private and self.fed.head_rounds > 0:
            results["head_rounds"] = self.head_rounds(head, setup, "logit_adjusted", False, "refine")
            results["refined"] = self.evaluate(head, counts)
        return results

    def head_run(self, setup: dict[str, Tensor]) -> dict:
        head, counts = self.new_head(), setup["client_counts"].sum(0)
        history = self.head_rounds(head, setup, self.fed.head_loss, False, "head")
        return {"head": self.evaluate(head, counts), "head_rounds": history}

    def creff_run(self, setup: dict[str, Tensor]) -> dict:
        fed, counts = self.fed, setup["client_counts"].sum(0)
        per_class = fed.creff_features_per_class
        labels = torch.arange(self.num_classes).repeat_interleave(per_class)
        state = {"features": torch.randn(len(labels), self.feature_dim, generator=named_generator(self.config.seed, "creff-init"))}
        retrained = self.new_head()

        def on_round(server_round: int, uploads: dict) -> dict:
            global_head = self.new_head()
            global_head.load_state_dict(uploads["global"])
            present = uploads["counts"] > 0
            state["features"] = match_features(
                global_head, state["features"], labels, uploads["gradients"], present, fed.creff_match_steps, fed.creff_match_lr
            )
            retrained.load_state_dict(uploads["global"])
            train_head(
                retrained,
                state["features"],
                labels,
                self.config.classifier,
                named_generator(self.config.seed, f"creff-{server_round}"),
                False,
            )
            return {"creff_acc": self.evaluate(retrained, counts)["acc"]["overall"]}

        history = self.head_rounds(self.new_head(), setup, "ce", True, "creff", on_round)
        return {"creff": self.evaluate(retrained, counts), "head_rounds": history}

    def execute(self) -> dict:
        started = time.perf_counter()
        setup = self.setup_tensors = self.setup()
        if self.fed.algorithm in DENOISER_ALGORITHMS:
            results = self.denoiser_run(setup)
        elif self.fed.algorithm == "creff":
            results = self.creff_run(setup)
        else:
            results = self.head_run(setup)
        results |= {
            "algorithm": self.fed.algorithm,
            "private": self.private,
            "client_counts": setup["client_counts"].tolist(),
            "setup": self.run.stage_info("setup"),
            "session_s": time.perf_counter() - started,
        }
        self.run.write_results(results)
        return results
