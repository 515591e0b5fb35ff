"""`dp_gaussian`: the private class-Gaussian release — class counts, sums and sums of outer
products of the clipped training features, each by the Gaussian mechanism, composed to
(`privacy.epsilon`, `privacy.delta`) by the tight accountant (`featdiff.privacy.controls`); the
class Gaussian built from them is sampled (`privacy.release_per_class` per class) and a head
trained on those samples alone is the private row `dp_gaussian`. The control every private
feature release has to beat at the same ε: the cheapest generator, released.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featdiff.config import RunConfig, private_control_rules

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

FEATURES_ONLY = True
PRIVATE = True

rules = private_control_rules
COVERED_FILES = ["dp_release.safetensors", "dp_pseudo_features.safetensors", "dp_pseudo_classifier.safetensors"]


def preflight(config: RunConfig) -> None:
    from featdiff.methods.stages import dataset_size
    from featdiff.privacy.controls import plan_control

    plan_control("dp_gaussian", config.privacy, dataset_size(config))


def run(context: MethodContext) -> MethodResult:
    import torch

    from featdiff.methods.stages import MethodResult, cheap_controls, evaluate_all, retrain_classifier, stage_private_release
    from featdiff.privacy.controls import clipped_to_bound, control_ledger, plan_control, released_gaussian
    from featdiff.runs import StageOutput
    from featdiff.seeding import named_generator
    from featdiff.training.classifier import WeightedFeatures

    config, bundle = context.config, context.bundle
    privacy = config.privacy
    controls = cheap_controls(context)
    plan = plan_control("dp_gaussian", privacy, len(context.encoded.train.labels))
    statistics = stage_private_release(context, plan, "dp_gaussian")
    gaussian = released_gaussian(statistics, config.generation.shrinkage)

    def release() -> StageOutput:
        counts = torch.full((bundle.num_classes,), privacy.release_per_class)
        features, labels = gaussian.generate(counts, named_generator(config.seed, "dp_gaussian/release sampling"))
        return {"features": features, "labels": labels}, {}

    stored, _ = context.run.stage("dp_generation", release, file="dp_pseudo_features.safetensors")
    data = WeightedFeatures(stored["features"], stored["labels"], torch.ones(len(stored["labels"])))
    head = retrain_classifier(context, "dp_pseudo_classifier", context.encoder, data, random_init=True)
    clipped = clipped_to_bound(context.encoded, privacy.norm_bound)
    summary = evaluate_all(head.module, clipped, head.prior, context, adjust_counts=statistics.counts.clamp_min(1.0))
    released = "class counts, class sums and sums of outer products by the Gaussian mechanism, then class-Gaussian samples"
    ledger = control_ledger(plan, privacy, seed=config.seed, covered_files=COVERED_FILES, covered_row="dp_gaussian", released=released)
    return MethodResult(summary, {"privacy": ledger}, controls)
