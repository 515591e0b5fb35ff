"""The stages of `ldmlr_dp` (the method's rules and entry point are its package's __init__)."""

from __future__ import annotations

import torch

from featdiff.config import RunConfig
from featdiff.data.bundle import load_dataset
from featdiff.diffusion.objective import DenoisingObjective
from featdiff.generation.pseudo import FeatureGenerator, SamplerSettings, build_denoiser, pseudo_counts
from featdiff.methods.stages import (
    MethodContext,
    MethodResult,
    cheap_controls,
    evaluate_all,
    fit_feature_generator,
    retrain_classifier,
    retrain_with_pseudo,
)
from featdiff.models.encoders import encoder_for
from featdiff.privacy.controls import clipped_to_bound
from featdiff.privacy.dp_promise import (
    generator_for,
    initialisation_generator,
    phase_one_noise,
    phase_state,
    phase_two_draws,
    phase_two_noise,
    private_records,
    train_phase_one,
    train_phase_two,
)
from featdiff.privacy.noise import noise_source
from featdiff.privacy.plan import PrivacyPlan, plan_privacy
from featdiff.runs import StageOutput
from featdiff.seeding import initialise, named_generator
from featdiff.training.classifier import WeightedFeatures

STREAM = "ldmlr_dp"
"""The prefix of every random stream of the private denoiser (`featdiff.privacy.dp_promise`)."""
CONTROL = "control"
"""The sub-folder of the non-private LDMLR control's denoiser and pseudo-features."""
COVERED_FILES = (
    "dp_phase_one.safetensors",
    "dp_denoiser.safetensors",
    "dp_pseudo_features.safetensors",
    "dp_pseudo_classifier.safetensors",
)
"""The files of a private run the guarantee covers: both phases' denoisers, the release, and the
classifier trained on the release alone. Every other file (the encoder, the classifiers trained on
real features, `control/`) is not private."""
COVERED_ROWS = ("dp_pseudo_only",)


def privacy_plan(context: MethodContext) -> PrivacyPlan:
    config, train = context.config, context.encoded.train
    return plan_privacy(config.privacy, config.diffusion, len(train.labels), train.features.shape[1])


def plan_for_config(config: RunConfig) -> PrivacyPlan:
    """The plan from the config and the dataset's size alone (no encoder run, no training)."""
    if config.data.source == "features":
        from featdiff.data.feature_file import load_feature_file

        file = load_feature_file(config.data.features)
        return plan_privacy(config.privacy, config.diffusion, len(file.train_labels), file.feature_dim)
    bundle = load_dataset(config.data, seed=config.seed)
    channels = bundle.train.images.shape[1]
    feature_dim = int(encoder_for(bundle.name, bundle.num_classes, channels, config.encoder.architecture).feature_dim)
    return plan_privacy(config.privacy, config.diffusion, len(bundle.train.labels), feature_dim)


def stage_private_generator(context: MethodContext, plan: PrivacyPlan) -> FeatureGenerator:
    """Phase I then Phase II, each a resumable stage; the generator samples Phase II's EMA."""
    run, config, device = context.run, context.config, context.device
    privacy, diffusion = config.privacy, config.diffusion
    objective = DenoisingObjective.of(diffusion)
    train = context.encoded.train
    records = private_records(train.features, privacy.norm_bound)
    model = build_denoiser(records.shape[1], context.bundle.num_classes, diffusion)
    model = initialise(model, initialisation_generator(config.seed, STREAM)).to(device)
    size = len(train.labels)

    def phase_one() -> tuple[dict[str, torch.Tensor], dict]:
        noise = phase_one_noise(config.seed, STREAM, privacy, device)
        state = phase_state(model, size=size, batch=privacy.phase_one_batch, lr=privacy.lr, ema_decay=diffusion.ema_decay, noise=noise)
        run.resume_into("dp_phase_one", state)
        with run.timed("dp_phase_one_s"):
            train_phase_one(
                state,
                records,
                objective,
                privacy,
                plan,
                noise=noise,
                checkpoint=lambda saved: run.save_checkpoint("dp_phase_one", saved),
            )
        return model.state_dict(), {}

    weights, _ = run.stage("dp_phase_one", phase_one)
    model.load_state_dict(weights)
    noise = phase_two_noise(config.seed, STREAM, privacy, device)
    state = phase_state(
        model,
        size=size,
        batch=privacy.phase_two_batch,
        lr=privacy.lr,
        ema_decay=diffusion.ema_decay,
        noise=noise,
        draws=phase_two_draws(config.seed, STREAM, device),
    )

    def phase_two() -> tuple[dict[str, torch.Tensor], dict]:
        run.resume_into("dp_phase_two", state)
        with run.timed("dp_phase_two_s"):
            train_phase_two(
                state,
                records,
                train.labels,
                objective,
                privacy,
                plan,
                noise=noise,
                checkpoint=lambda saved: run.save_checkpoint("dp_phase_two", saved),
            )
        return state.ema.module.state_dict(), {}

    denoiser, _ = run.stage("dp_phase_two", phase_two, file="dp_denoiser.safetensors")
    state.ema.module.load_state_dict(denoiser)
    return generator_for(state.ema.module, plan, objective)


def stage_control_pseudo_features(context: MethodContext, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-private LDMLR control's denoiser and pseudo-features (the same streams as method
    `ldmlr`'s), stored in `control/` so that nothing beside the private release looks like it."""
    run, config = context.run, context.config

    def fit_and_sample() -> StageOutput:
        with run.timed("denoiser_s"):
            generator = fit_feature_generator(context, context.encoded.train)
        run.save_tensors(f"{CONTROL}/denoiser.safetensors", generator.tensors())
        with run.timed("generation_s"):
            pseudo, labels = generator.generate(
                counts, SamplerSettings.of(config.diffusion), named_generator(config.seed, "generation/sampling", context.device)
            )
        return {"features": pseudo, "labels": labels}, {}

    stored, _ = run.stage("control_generation", fit_and_sample, file=f"{CONTROL}/pseudo_features.safetensors")
    return stored["features"], stored["labels"]


def ledger(plan: PrivacyPlan, context: MethodContext) -> dict:
    """What the guarantee is, under which assumptions, what it covers (files and result rows)
    and what it does not."""
    config = context.config
    privacy = config.privacy
    table = plan.table()
    per_record = plan.epsilon_with_phase_one_per_record()
    encoder = config.encoder
    source = f"{encoder.checkpoint}, trained on other data" if encoder.public else (encoder.checkpoint or "trained in this run")
    # ε is null for a run without noise (ε = ∞; JSON has no infinity).
    return {
        "mechanism": "dp-promise: Phase I Poisson-subsampled Gaussian by the forward noise (t >= S), Phase II DP-SGD (t < S)",
        "private": plan.private,
        "epsilon": plan.epsilon if plan.private else None,
        "delta": plan.delta,
        "accountant": plan.accountant,
        "epsilon_by_accountant": table,
        # Without dp-promise's argument for Phase I (null: no Phase I, no noise, or no finite bound).
        "epsilon_with_phase_one_per_record": per_record if per_record is not None and per_record < float("inf") else None,
        "phase_one_accounting": privacy.phase_one_accounting,
        "assumes": phase_one_assumption(per_record, privacy.phase_one_accounting),
        "adjacency": privacy.adjacency,
        "records": plan.dataset_size,
        "norm_bound_R": privacy.norm_bound,
        "feature_scale": plan.feature_scale,
        "sensitivity": plan.sensitivity,
        "split_timestep_S": privacy.split_timestep,
        "alpha_bar_S": plan.alpha_bar,
        "phase_one": None if plan.phase_one is None else vars(plan.phase_one),
        "phase_two": None if plan.phase_two is None else vars(plan.phase_two),
        "clip_norm_C": privacy.clip_norm,
        "draws_K": privacy.draws,
        "released_per_class": privacy.release_per_class,
        "reproducible_noise": privacy.reproducible_noise,
        "noise_source": noise_source(privacy, config.seed),
        "covered_files": list(COVERED_FILES),
        "covered_rows": list(COVERED_ROWS),
        "covers": (
            f"the files {', '.join(COVERED_FILES)} (both phases' denoisers, the released pseudo-features and the "
            "dp_pseudo_only classifier trained on them alone), with respect to the training feature records given the "
            f"encoder ({source})"
            + ("; the encoder never saw these images, so this extends to the training images themselves" if encoder.public else "")
            + (
                "; it does not hold against anyone who knows the seed (privacy.reproducible_noise is true)"
                if privacy.reproducible_noise
                else ""
            )
        ),
        "does_not_cover": (
            "every file of the run folder not in covered_files, among them "
            + ("" if encoder.public else "the encoder, trained without privacy on the same images (DP end to end needs a public encoder); ")
            + f"the classifiers trained on real features (the method's own result, fc_retrain, ldmlr) and the non-private "
            f"LDMLR control in {CONTROL}/; Phase I's regression target, which depends on the clean record: dp-promise's "
            "argument covers only the noisy input x_t, and one-run canary audits of Phase I alone found no leak "
            "(ε_lo = 0 on CIFAR-10-LT and on digits; a lower bound, not a proof)"
        ),
    }


def phase_one_assumption(per_record: float | None, phase_one_accounting: str) -> str:
    """What ε assumes about Phase I, and what can be claimed without it (`PrivacyPlan.epsilon_with_phase_one_per_record`)."""
    if per_record is None:
        return "nothing beyond the mechanisms above (no Phase I, or no noise)"
    if phase_one_accounting == "per_record":
        return "nothing beyond the mechanisms above: Phase I is bounded record by record (privacy.phase_one_accounting: per_record)"
    argument = (
        "dp-promise's argument that each Phase I batch of noisy inputs, which its unclipped, noiseless training may "
        "reveal as a set, costs what a Poisson-subsampled Gaussian sum costs (not proven for a set of separate noisy points)"
    )
    if per_record == float("inf"):
        return f"{argument}; without it no finite ε holds under add/remove adjacency (an added record's noisy input has no counterpart)"
    return f"{argument}; bounded record by record instead (every noisy input traced to its record), the total is ε = {per_record:.3g}"


def guarantee_summary(ledger: dict) -> str:
    """The lines a private run prints under its results table: ε, and which rows and files the
    guarantee covers (every other row and file is not private)."""
    if not ledger["private"]:
        return "privacy: not private (privacy.epsilon is null, ε = ∞): no row or file is covered by a guarantee"
    lines = [
        f"privacy: (ε = {ledger['epsilon']:.3g}, δ = {ledger['delta']:g})-DP ({ledger['accountant']} accountant, "
        f"{ledger['adjacency'].replace('_', ' ')} adjacency) covers the row {', '.join(ledger['covered_rows'])} only,",
        f"  and the files {', '.join(ledger['covered_files'])} only (results.json's privacy ledger says why)",
    ]
    if ledger.get("phase_one") is not None:  # ldmlr_dp's ledger; a private control's has no Phase I
        lines.append(f"privacy: ε assumes {ledger['assumes']}")
    if ledger["reproducible_noise"]:
        lines.append(
            "privacy: the noise was seeded (privacy.reproducible_noise: true): the claim does not hold against anyone who knows the seed"
        )
    return "\n".join(lines)


def run(context: MethodContext) -> MethodResult:
    config, bundle = context.config, context.bundle
    plan = privacy_plan(context)
    controls = cheap_controls(context)
    if config.privacy.ldmlr_control:
        ldmlr_pseudo = stage_control_pseudo_features(context, pseudo_counts(context.train_counts, config.generation))
        controls["ldmlr"], _ = retrain_with_pseudo(context, "ldmlr_classifier", context.encoder, context.encoded, *ldmlr_pseudo)
    generator = stage_private_generator(context, plan)

    def release() -> tuple[dict[str, torch.Tensor], dict]:
        counts = torch.full((bundle.num_classes,), config.privacy.release_per_class)
        with context.run.timed("dp_generation_s"):
            features, labels = generator.generate(
                counts, SamplerSettings.of(config.diffusion), named_generator(config.seed, f"{STREAM}/release sampling", context.device)
            )
        return {"features": features, "labels": labels}, {}

    stored, _ = context.run.stage("dp_generation", release, file="dp_pseudo_features.safetensors")
    pseudo, labels = stored["features"], stored["labels"]
    summary, extra = retrain_with_pseudo(context, "classifier", context.encoder, context.encoded, pseudo, labels)
    alone = WeightedFeatures(pseudo, labels, torch.ones(len(labels)))
    head = retrain_classifier(context, "dp_pseudo_classifier", context.encoder, alone, random_init=True)
    clipped = clipped_to_bound(context.encoded, config.privacy.norm_bound)
    # The release never used the class counts: neither may the tuned adjustment of its classifier.
    uniform = torch.ones(bundle.num_classes, dtype=torch.float64)
    controls["dp_pseudo_only"] = evaluate_all(head.module, clipped, head.prior, context, adjust_counts=uniform)
    return MethodResult(summary, extra | {"privacy": ledger(plan, context)}, controls)
