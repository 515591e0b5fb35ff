"""`dp_linear`: DP-SGD on a linear head over the clipped training features, with the
logit-adjusted loss whose prior comes from a Gaussian release of the class counts (its own share
of ε, `privacy.count_share`), all composed to (`privacy.epsilon`, `privacy.delta`) by the tight
accountant (`featdiff.privacy.controls`). The cheapest private classifier: the control of every
private feature release. With `privacy.linear_release: gaussian` it also trains on
pseudo-features of a private class-Gaussian release (the combination of a release with DP-SGD on
the real records; the budget is split by `privacy.release_share`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featdiff.config import RunConfig, private_control_rules

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

FEATURES_ONLY = True
PRIVATE = True

rules = private_control_rules
COVERED_FILES = ["dp_release.safetensors", "dp_head.safetensors"]


def preflight(config: RunConfig) -> None:
    from featdiff.methods.stages import dataset_size
    from featdiff.privacy.controls import plan_control

    plan_control("dp_linear", config.privacy, dataset_size(config))


def run(context: MethodContext) -> MethodResult:
    import torch
    from torch import nn

    from featdiff.methods.stages import MethodResult, cheap_controls, evaluate_all, stage_private_release
    from featdiff.privacy.controls import clipped_to_bound, control_ledger, plan_control, released_gaussian, train_private_head
    from featdiff.privacy.dp_promise import clip_to_norm
    from featdiff.privacy.noise import private_noise
    from featdiff.runs import StageOutput
    from featdiff.seeding import named_generator
    from featdiff.training.classifier import WeightedFeatures

    config, bundle, train = context.config, context.bundle, context.encoded.train
    privacy = config.privacy
    controls = cheap_controls(context)
    plan = plan_control("dp_linear", privacy, len(train.labels))
    statistics = stage_private_release(context, plan, "dp_linear")
    released_counts = statistics.counts.clamp_min(1.0)
    pseudo = None
    if privacy.linear_release == "gaussian":
        gaussian = released_gaussian(statistics, config.generation.shrinkage)
        counts = torch.full((bundle.num_classes,), privacy.release_per_class)
        features, labels = gaussian.generate(counts, named_generator(config.seed, "dp_linear/release sampling"))
        pseudo = WeightedFeatures(features, labels, torch.ones(len(labels)))
    head = nn.Linear(train.features.shape[1], bundle.num_classes).to(context.device)
    nn.init.zeros_(head.weight)  # a public start: nothing of the records in it
    nn.init.zeros_(head.bias)

    def fit() -> StageOutput:
        noise = private_noise(config.seed, "dp_linear/dp-sgd", reproducible=privacy.reproducible_noise, device=context.device)
        offsets = (config.classifier.loss_tau * torch.log(released_counts / released_counts.sum())).float()
        records = clip_to_norm(train.features, privacy.norm_bound)
        with context.run.timed("dp_head_s"):
            train_private_head(
                head,
                records,
                train.labels,
                offsets=offsets,
                plan=plan,
                privacy=privacy,
                noise=noise,
                pseudo=pseudo,
                pseudo_generator=named_generator(config.seed, "dp_linear/pseudo batches") if pseudo is not None else None,
            )
        return head.state_dict(), {}

    weights, _ = context.run.stage("dp_head", fit, file="dp_head.safetensors")
    head.load_state_dict(weights)
    uniform = torch.full((bundle.num_classes,), 1.0 / bundle.num_classes, dtype=torch.float64)
    clipped = clipped_to_bound(context.encoded, privacy.norm_bound)
    summary = evaluate_all(head, clipped, uniform, context, adjust_counts=released_counts)
    released = (
        "class counts by the Gaussian mechanism"
        + (", class sums and outer products (pseudo-features)" if pseudo is not None else "")
        + ", DP-SGD of a linear head with the logit-adjusted loss"
    )
    ledger = control_ledger(plan, privacy, seed=config.seed, covered_files=COVERED_FILES, covered_row="dp_linear", released=released)
    return MethodResult(summary, {"privacy": ledger}, controls)
