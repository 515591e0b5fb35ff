"""The Flower ClientApp: what one holder of long-tailed records does when the server asks.

Every handler calls the training core (denoiser step and loop, dp-promise's phases, the
classifier loop); none has a loss or a loop of its own. Messages:
- query.statistics: per-class counts, and (non-private runs) sums and outer products, or (private
  `gaussian_stats`) clipped sums and outer products released by the Gaussian mechanism;
- train.warmup: a local denoiser, uploaded as weights or as the requested pseudo-features;
- train: E local denoiser steps from the broadcast weights (DP-SGD in a private run);
- evaluate: the fixed-draw denoising loss of the broadcast weights on the client's records;
- train.head: local epochs of the linear head (CReFF: plus per-class gradients of the broadcast head;
  a private run: DP-SGD with the logit-adjusted loss, one accountant over all head rounds).

A message whose config says `simulate-failure` is answered with an error and no work: the
server's fault injector, so drop-outs are reproducible. Every handler runs at the config's
`compute.threads` and draws no progress bars.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor, nn

from featdiff.config import ClassifierConfig, RunConfig, private_training
from featdiff.diffusion.sampling import Clip
from featdiff.diffusion.scaling import Standardizer
from featdiff.federated.client import local_update
from featdiff.federated.creff import class_gradients
from featdiff.federated.head import train_head
from featdiff.federated.task import (
    client_records,
    fixed_loss,
    from_record,
    new_denoiser,
    records_for_training,
    run_config,
    to_record,
)
from featdiff.federated.task import (
    num_classes as class_count,
)
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, schedule_for
from featdiff.progress import silenced
from featdiff.seeding import named_generator
from featdiff.statistics import SufficientStatistics
from featdiff.training.denoiser import denoiser_state, train_denoiser

SIMULATED_FAILURE = 1001
EVALUATION_SEED = 7919


@dataclasses.dataclass
class Holder:
    config: RunConfig
    partition_id: int
    features: Tensor
    labels: Tensor
    num_classes: int


def holder(context: Context, settings: dict) -> Holder:
    """This node's records; `settings` fill run-config keys the runtime did not pass."""
    config = run_config(str({**settings, **context.run_config}["config"]))
    partition_id, partitions = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    features, labels = client_records(config, partition_id, partitions)
    return Holder(config, partition_id, features, labels, class_count(config))


def scaler_from(message: Message) -> Standardizer:
    tensors = from_record(message.content["scaler"])
    scaler = Standardizer(tensors["mean"].numel())
    scaler.mean.copy_(tensors["mean"])
    scaler.std.copy_(tensors["std"])
    return scaler


def clip_from(message: Message, config: RunConfig) -> Clip:
    """Where sampling confines x̂0: the public ball of radius √D (private), or the federation's
    per-dimension range of the scaled features (the min and max over clients)."""
    tensors = from_record(message.content["scaler"])
    if private_training(config):
        return math.sqrt(tensors["mean"].numel())
    return tensors["low"], tensors["high"]


def broadcast_denoiser(message: Message, client: Holder) -> tuple[Tensor, nn.Module]:
    """The client's records as the denoiser sees them, and the server's broadcast denoiser."""
    records = records_for_training(client.features, scaler_from(message), client.config)
    model = new_denoiser(records.shape[1], client.num_classes, client.config)
    model.load_state_dict(from_record(message.content["arrays"]))
    return records, model


def reply(message: Message, arrays: dict[str, Tensor] | None = None, **metrics: int | float | list[int] | list[float]) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = to_record(arrays)
    return Message(content, reply_to=message)


def failed(message: Message) -> Message | None:
    config = message.content.get("config", ConfigRecord())
    if bool(config.get("simulate-failure", False)):
        return Message(Error(code=SIMULATED_FAILURE, reason="simulated drop-out"), reply_to=message)
    return None


def statistics(message: Message, client: Holder) -> Message:
    options = message.content["config"]
    identity = {"partition-id": client.partition_id, "num-examples": len(client.labels)}
    if private_training(client.config) and bool(options.get("dp-moments", False)):
        from featdiff.federated.private_client import private_moments

        generator = named_generator(client.config.seed, f"dp-moments-{client.partition_id}")
        released = private_moments(client.features, client.labels, client.num_classes, client.config, generator)
        epsilon = float(released.pop("epsilon"))
        return reply(message, released, **identity, epsilon=epsilon)
    stats = SufficientStatistics.of(client.features, client.labels, client.num_classes)
    if private_training(client.config) or not bool(options["moments"]):
        tensors = {"counts": stats.counts}
    else:
        tensors = stats.as_dict() | {"minimum": client.features.min(0).values, "maximum": client.features.max(0).values}
    return reply(message, tensors, **identity)


def warmup(message: Message, client: Holder) -> Message:
    config, size = client.config, len(client.labels)
    schedule = schedule_for(config.diffusion)
    scaler = scaler_from(message)
    records = records_for_training(client.features, scaler, config)
    model = new_denoiser(records.shape[1], client.num_classes, config)
    if private_training(config):
        from featdiff.federated.private_client import private_warmup

        generators = tuple(named_generator(config.seed, f"{phase}-{client.partition_id}") for phase in ("warmup", "warmup2"))
        spent = private_warmup(model, records, client.labels, schedule, config, generators)
    else:
        local = config.diffusion.model_copy(
            update={"steps": config.federated.warmup_steps, "batch_size": min(config.diffusion.batch_size, size)}
        )
        warmup = f"warmup-{client.partition_id}"
        state = denoiser_state(
            model, size, local, named_generator(config.seed, f"{warmup}/data"), draws=named_generator(config.seed, f"{warmup}/diffusion")
        )
        if local.steps > 0:
            train_denoiser(state, records, client.labels, schedule, local)
        spent = {"epsilon": math.inf}
    weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
    quota = torch.tensor([int(q) for q in message.content["config"]["quota"]])
    if str(message.content["config"]["upload"]) == "model":
        return reply(message, weights, **{"num-examples": size, **spent})
    generator = FeatureGenerator(model.eval(), scaler, clip_from(message, config), schedule, config.diffusion.resolved_prediction())
    pseudo, labels = generator.generate(
        quota, SamplerSettings.of(config.diffusion), named_generator(config.seed, f"warmup-sample-{client.partition_id}")
    )
    return reply(message, {"features": pseudo, "labels": labels}, **{"num-examples": size, **spent})


def train(message: Message, client: Holder) -> Message:
    if (failure := failed(message)) is not None:
        return failure
    config, size = client.config, len(client.labels)
    server_round = int(message.content["config"]["round"])
    schedule = schedule_for(config.diffusion)
    records, model = broadcast_denoiser(message, client)
    steps = config.federated.local_steps
    if private_training(config):
        from featdiff.federated.private_client import private_round

        generator = named_generator(config.seed, f"round{server_round}-client{client.partition_id}")
        private_round(model, records, client.labels, schedule, config, generator)
        weights, loss = {name: value.detach().clone() for name, value in model.state_dict().items()}, math.nan
    else:
        name = f"round{server_round}-client{client.partition_id}"
        weights, loss = local_update(
            model,
            records,
            client.labels,
            schedule,
            config.diffusion,
            steps,
            data=named_generator(config.seed, f"{name}/data"),
            draws=named_generator(config.seed, f"{name}/diffusion"),
        )
    counts = torch.bincount(client.labels, minlength=client.num_classes).tolist()
    return reply(message, weights, **{"num-examples": size, "loss": loss, "class-counts": counts})


def evaluate(message: Message, client: Holder) -> Message:
    config = client.config
    records, model = broadcast_denoiser(message, client)
    loss, size = fixed_loss(model, records, client.labels, schedule_for(config.diffusion), config, EVALUATION_SEED + client.partition_id)
    return reply(message, None, **{"num-examples": size, "loss": loss})


def head(message: Message, client: Holder) -> Message:
    if (failure := failed(message)) is not None:
        return failure
    config, federated = client.config, client.config.federated
    options = message.content["config"]
    weights = from_record(message.content["arrays"])
    model = nn.Linear(client.features.shape[1], client.num_classes)
    model.load_state_dict(weights)
    extra: dict[str, Tensor] = {}
    if bool(options.get("creff", False)):
        gradients, counts = class_gradients(model, client.features, client.labels, client.num_classes)
        extra = {"creff.gradients": gradients.detach(), "creff.counts": counts}
    generator = named_generator(config.seed, f"head-round{int(options['round'])}-client{client.partition_id}")
    if private_training(config):
        from featdiff.federated.private_client import private_head_round

        epsilon = private_head_round(model, client.features, client.labels, config, generator)
        return reply(message, model.state_dict(), **{"num-examples": len(client.labels), "loss": math.nan, "epsilon": epsilon})
    local = ClassifierConfig(
        epochs=federated.head_local_epochs, lr=federated.head_lr, batch_size=config.classifier.batch_size, weight_decay=0.0
    )
    loss = train_head(model, client.features, client.labels, local, generator, logit_adjusted=str(options["loss"]) == "logit_adjusted")
    return reply(message, {**model.state_dict(), **extra}, **{"num-examples": len(client.labels), "loss": loss})


def make_client_app(settings: dict[str, str | bool] | None = None) -> ClientApp:
    """The ClientApp; `settings` fill run-config keys the runtime does not pass (run_simulation
    takes no run config), and travel with the app object to the simulation's workers."""
    app = ClientApp()

    def with_settings(handler: Callable[[Message, Holder], Message]) -> Callable[[Message, Context], Message]:
        def handle(message: Message, context: Context) -> Message:
            client = holder(context, settings or {})
            if client.config.compute.threads is not None:
                torch.set_num_threads(client.config.compute.threads)
            with silenced():  # the server's stage bar is the run's progress; local training is quiet
                return handler(message, client)

        return handle

    app.query("statistics")(with_settings(statistics))
    app.train("warmup")(with_settings(warmup))
    app.train()(with_settings(train))
    app.evaluate()(with_settings(evaluate))
    app.train("head")(with_settings(head))
    return app


app = make_client_app()
"""What `flwr run` loads (featdiff/federated/flower_app/pyproject.toml): settings come from the run config."""
