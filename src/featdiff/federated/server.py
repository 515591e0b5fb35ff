"""The federation layer every server strategy shares (Flower's Strategy idiom, on featdiff's run folder).

`FederatedServer` holds what no algorithm changes: the setup stage (every client's per-class
counts, and for denoiser strategies the pooled moments behind the scaling and the Fréchet
references), the test set and the linear head's evaluation, FedAvg rounds of the head, failure
handling and the results. A strategy (featdiff.federated.strategies, one module per algorithm)
subclasses it and implements `train`; its own round loop calls overridable hooks, never branches
on algorithm names. A round in which no client succeeds ends the run with one line naming the
round and every client's error, after what finished is saved: `--resume` continues from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import Tensor, nn

from featdiff.config import RunConfig, private_training
from featdiff.diffusion.sampling import Clip
from featdiff.diffusion.scaling import Standardizer
from featdiff.errors import UserError
from featdiff.evaluation.metrics import summarize
from featdiff.evaluation.protocol import part_summaries, split_test_set
from featdiff.federated.aggregation import weighted_average
from featdiff.federated.creff import average_class_gradients
from featdiff.federated.federation import Exchange, Federation, round_config, round_sample
from featdiff.federated.task import encoded_features, fixed_scaler, from_record, to_record
from featdiff.progress import progress, silenced
from featdiff.runs import Run
from featdiff.seeding import named_generator, reset_parameters
from featdiff.statistics import SufficientStatistics

HEAD_ROUND_OFFSET = 10_000
"""Head rounds draw their clients as rounds 10 001, 10 002, …: apart from the denoiser's rounds."""

ClassGradients = Callable[[int, dict], dict]
"""CReFF's server step: (round, {gradients, counts, global}) → values for the round's record."""


def state_of(model: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@dataclass(frozen=True)
class Setup:
    """What the setup stage learnt from the whole federation, as the later stages use it."""

    client_counts: Tensor
    """(clients, classes) records per class on each client."""
    scaler: Standardizer
    clip: Clip
    """Where sampling confines x̂0: the federation's scaled per-dimension range, or (private, or no
    moments asked) the public ball of radius √D."""
    means: Tensor | None
    covariances: Tensor | None

    @classmethod
    def of(cls, tensors: dict[str, Tensor]) -> Setup:
        scaler = Standardizer(tensors["scaler.mean"].numel())
        scaler.mean.copy_(tensors["scaler.mean"])
        scaler.std.copy_(tensors["scaler.std"])
        clip = (tensors["clip.low"], tensors["clip.high"]) if "clip.low" in tensors else math.sqrt(scaler.mean.numel())
        return cls(tensors["client_counts"], scaler, clip, tensors.get("means"), tensors.get("covariances"))

    @property
    def counts(self) -> Tensor:
        """(classes,) the federation's records per class."""
        return self.client_counts.sum(0)

    def scaler_record(self) -> ArrayRecord:
        """The scaling, and (non-private) where sampling clips x̂0, as the clients receive it."""
        clip = {"low": self.clip[0], "high": self.clip[1]} if isinstance(self.clip, tuple) else {}
        return to_record({"mean": self.scaler.mean, "std": self.scaler.std, **clip})


class FederatedServer:
    """The shared federation layer; subclasses implement `train` (and may set `moments`)."""

    moments = False
    """Whether the setup asks non-private clients for sums and outer products (denoiser strategies)."""
    private_moments = False
    """Whether the setup asks private clients for a Gaussian release of them (`gaussian_stats`)."""

    def __init__(self, run: Run, federation: Federation, *, say: Callable[[str], None] = print) -> None:
        self.run, self.federation, self.say = run, federation, say
        self.config: RunConfig = run.config
        self.fed = self.config.federated
        tensors = encoded_features(self.fed.features)
        self.test_features, self.test_labels = tensors["test_features"], tensors["test_labels"]
        self.feature_dim = self.test_features.shape[1]
        self.num_classes = int(tensors["train_labels"].max()) + 1
        self.private = private_training(self.config)
        evaluation = self.config.evaluation
        self.parts = split_test_set(
            self.test_labels,
            evaluation.validation_fraction,
            evaluation.validation_seed,
            shuffle_report_labels=evaluation.shuffle_report_labels,
        )
        """The test set's validation part (every choice: τ, whether and how to refine the head)
        and report part (the tables), as in a centralised run."""

    def train(self, setup: Setup) -> dict:
        """The algorithm, from the setup to its results (the strategy's own entries of results.json)."""
        raise NotImplementedError

    def execute(self) -> dict:
        setup = self.setup()
        results = self.train(setup)
        results |= {
            "algorithm": self.fed.algorithm,
            "private": self.private,
            "reproducible_noise": self.private and self.config.privacy.reproducible_noise,
            "client_counts": setup.client_counts.tolist(),
            "setup": self.run.stage_info("setup"),
            "wall_s": self.run.elapsed_s,
        }
        self.run.write_results(results)
        return results

    # Stage 1: setup.

    def setup(self) -> Setup:
        moments = self.moments and not self.private
        released = self.private and self.private_moments
        exchange = self.federation.discover(moments=moments, dp_moments=released)
        present = sorted(exchange.replies)
        if present != list(range(self.fed.clients)):
            absent = sorted(set(range(self.fed.clients)) - set(present))
            errors = f"; errors: {exchange.failures()}" if exchange.errors else ""
            raise UserError(
                f"setup: {len(present)} of federated.clients = {self.fed.clients} clients answered (missing partitions {absent}{errors}): "
                "start one SuperNode per partition, with --node-config 'partition-id=i num-partitions=N', and fix what they report"
            )
        if self.run.stage_done("setup"):
            return Setup.of(self.run.load_tensors("setup.safetensors", stage="setup"))
        statistics = {p: from_record(exchange.replies[p]["arrays"]) for p in present}
        tensors = {"client_counts": torch.stack([statistics[p]["counts"] for p in present]).long()}
        if not moments:
            scaler = fixed_scaler(self.feature_dim, self.config)
        else:
            pooled = SufficientStatistics.total([SufficientStatistics.from_dict(statistics[p]) for p in present])
            scaler = pooled.standardizer()
            tensors["means"], tensors["covariances"] = pooled.means_and_covariances()
            low = torch.stack([statistics[p]["minimum"] for p in present]).min(0).values
            high = torch.stack([statistics[p]["maximum"] for p in present]).max(0).values
            tensors |= {"clip.low": scaler.encode(low), "clip.high": scaler.encode(high)}
        epsilons = {}
        if released:  # the sum of every client's released moments: post-processing of DP releases
            pooled = SufficientStatistics.total([SufficientStatistics.from_dict(statistics[p]) for p in present])
            tensors["means"], tensors["covariances"] = pooled.means_and_covariances()
            epsilons = {"max_client_epsilon": max(float(exchange.replies[p]["metrics"]["epsilon"]) for p in present)}
        tensors |= {"scaler.mean": scaler.mean, "scaler.std": scaler.std}
        self.run.save_tensors("setup.safetensors", tensors)
        self.run.mark_done("setup", up_bytes=exchange.up_bytes, down_bytes=exchange.down_bytes, **epsilons)
        return Setup.of(tensors)

    # Failures.

    def check_answered(self, exchange: Exchange, *, stage: str) -> None:
        """End the run (after logging the failure) when no client of `stage` succeeded; what
        finished before it stays saved."""
        if exchange.replies:
            return
        message = f"{stage}: no client succeeded ({exchange.failures()}): fix the clients, then continue with --resume {self.run.directory}"
        self.run.log("failed", at=stage, missing=exchange.missing, errors=exchange.errors, message=message)
        raise UserError(message)

    # The linear head.

    def new_head(self) -> nn.Linear:
        head = nn.Linear(self.feature_dim, self.num_classes)
        reset_parameters(head, named_generator(self.config.seed, "federated-head"))
        return head

    def evaluate(self, head: nn.Module, counts: Tensor) -> dict:
        """The full test set's summary, its validation and report parts', and `tuned` (τ chosen
        on the validation part; the federation's class counts, which the setup sent in clear)."""
        with torch.inference_mode():
            logits = head(self.test_features)
        summary = summarize(logits, self.test_labels, counts)
        return summary | part_summaries(logits, self.test_labels, self.parts, counts, prior=None, index_groups=False)

    def head_rounds(
        self, head: nn.Linear, setup: Setup, *, loss: str, label: str, class_gradients: ClassGradients | None = None
    ) -> list[dict]:
        """FedAvg of the linear head on clients' real features; with `class_gradients` (CReFF),
        clients also send per-class gradients of the broadcast head, which it turns into
        federated features."""
        fed, history = self.fed, []
        with progress(total=fed.head_rounds, desc=f"{label} rounds", unit="round") as bar:
            for server_round in range(1, fed.head_rounds + 1):
                with silenced():
                    entry = self.head_round(head, setup, server_round, loss=loss, label=label, class_gradients=class_gradients)
                history.append(entry)
                self.run.log(label, **entry)
                bar.update(1)
                bar.set_postfix({"test acc": f"{entry['acc']:.2f}"}, refresh=False)
        return history

    def head_round(
        self, head: nn.Linear, setup: Setup, server_round: int, *, loss: str, label: str, class_gradients: ClassGradients | None
    ) -> dict:
        fed = self.fed
        sampled, failing = round_sample(
            self.config.seed, HEAD_ROUND_OFFSET + server_round, list(range(fed.clients)), fed.clients_per_round, fed.drop_rate
        )
        weights, creff = to_record(state_of(head)), class_gradients is not None
        contents = {
            p: RecordDict({"arrays": weights, "config": round_config(server_round, failing=p in failing, loss=loss, creff=creff)})
            for p in sampled
        }
        exchange = self.federation.send("train.head", contents, group=f"{label}-{server_round}")
        self.check_answered(exchange, stage=f"{label} round {server_round}")
        entry: dict = {"round": server_round, "sampled": sampled, "missing": exchange.missing, "errors": exchange.errors}
        replies = [exchange.replies[p] for p in sorted(exchange.replies)]
        arrays = [from_record(r["arrays"]) for r in replies]
        head_states = [{k: v for k, v in a.items() if not k.startswith("creff.")} for a in arrays]
        global_state = state_of(head)
        head.load_state_dict(weighted_average(head_states, [float(r["metrics"]["num-examples"]) for r in replies]))
        if class_gradients is not None:
            gradients, class_counts = average_class_gradients([a["creff.gradients"] for a in arrays], [a["creff.counts"] for a in arrays])
            entry |= class_gradients(server_round, {"gradients": gradients, "counts": class_counts, "global": global_state})
        summary = self.evaluate(head, setup.counts)
        accuracy = {"acc": summary["acc"]["overall"], "acc_adjusted": summary["acc_adjusted"]["overall"]}
        if self.private:
            entry["max_client_epsilon"] = max(float(r["metrics"]["epsilon"]) for r in replies)
        return entry | accuracy | {"up_bytes": exchange.up_bytes, "down_bytes": exchange.down_bytes}
