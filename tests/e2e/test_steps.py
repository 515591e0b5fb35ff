"""Which parameters each end-to-end step may change, and the collapse guard."""

import copy

import torch
import torch.nn.functional as F

from featdiff.config import DiffusionConfig, EndToEndConfig, FinetuneConfig, PseudoFilterConfig
from featdiff.diffusion.objective import denoising_loss, draw_timesteps_and_noise
from featdiff.diffusion.schedules import make_schedule
from featdiff.methods.e2e import steps
from featdiff.methods.e2e.losses import variance_floor_loss
from featdiff.methods.e2e.strategies import generates_at, term_weights

SCHEDULE = make_schedule("cosine", 100)
NO_FILTER = PseudoFilterConfig()


def _settings(config: EndToEndConfig, filter_config: PseudoFilterConfig = NO_FILTER, diffusion: DiffusionConfig | None = None):
    diffusion = diffusion or DiffusionConfig(num_steps=100)
    return steps.EndToEndSettings(FinetuneConfig(), config, filter_config, diffusion, SCHEDULE)


def _ready(config: EndToEndConfig, toy_batch, new_model):
    images, labels = toy_batch
    model = new_model(config)
    with torch.no_grad():
        features = model.encoder.eval().features(images)
    model.initialise_statistics(features, labels, torch.tensor([12, 8, 4]), config)
    model.encoder.train()
    return model, images, labels


def _optimizers(model):
    return steps.Optimizers(torch.optim.SGD(model.encoder.parameters(), lr=0.1), torch.optim.Adam(model.denoiser.parameters(), lr=0.01))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(module, snapshot):
    return all(torch.equal(v, snapshot[k]) for k, v in module.state_dict().items())


def test_generation_is_differentiable_only_where_configured(toy_batch, new_model):
    model, _, _ = _ready(EndToEndConfig(ge_sample_steps=3), toy_batch, new_model)
    config = EndToEndConfig(ge_sample_steps=3)
    frozen, _ = steps.generate_pseudo(model, 6, _settings(config), differentiable=False, generator=torch.Generator().manual_seed(0))
    assert not frozen.requires_grad
    live, labels = steps.generate_pseudo(model, 6, _settings(config), differentiable=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frozen, live)
    F.cross_entropy(model.classifier(live), labels).backward()
    grads = [p.grad for p in model.denoiser.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # The same check through finite differences on one weight: the sampler really depends on it.
    weight = model.denoiser.output.weight
    with torch.no_grad():
        weight[0, 0] += 1e-3
    shifted, _ = steps.generate_pseudo(model, 6, _settings(config), differentiable=False, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(shifted, frozen)


def test_joint_step_routes_ge_to_the_denoiser_only_when_configured(toy_batch, new_model):
    only_generation = steps.TermWeights(sem=0.0, ge=1.0, pseudo_share=0.5)
    for to_denoiser in (False, True):
        config = EndToEndConfig(ge_to_denoiser=to_denoiser, ge_sample_steps=2)
        model, images, labels = _ready(config, toy_batch, new_model)
        before = _snapshot(model.denoiser)
        steps.joint_step(model, _optimizers(model), images, labels, _settings(config), only_generation, generate=True)
        assert _same(model.denoiser, before) is (not to_denoiser)


def test_ldm_gradient_reaches_the_encoder_only_when_configured(toy_batch, new_model):
    """E's gradient from a joint step with and without the diffusion branch: equal unless
    `ldm_to_encoder` lets L_LDM through."""
    for to_encoder in (False, True):
        config = EndToEndConfig(ldm_to_encoder=to_encoder, collapse_guard=0.0)
        grads = []
        for weights in (steps.TermWeights(sem=0.0), steps.TermWeights(sem=1.0)):
            model, images, labels = _ready(config, toy_batch, new_model)
            still = steps.Optimizers(
                torch.optim.SGD(model.encoder.parameters(), lr=0.0), torch.optim.SGD(model.denoiser.parameters(), lr=0.0)
            )
            steps.joint_step(model, still, images, labels, _settings(config), weights, generate=False)
            grads.append(model.encoder.body[0].weight.grad.clone())
        assert torch.equal(grads[0], grads[1]) is (not to_encoder)


def test_strategy_b_steps_leave_frozen_parameters_bit_identical(toy_batch, new_model):
    config = EndToEndConfig(strategy="B", ge_sample_steps=2, semantic="cov", eta_cov=0.1)
    model, images, labels = _ready(config, toy_batch, new_model)
    optimizers = _optimizers(model)
    weights = term_weights(config, epoch=1.0, total_epochs=2.0)
    pseudo = steps.frozen_pseudo(model, 8, _settings(config))

    denoiser_before, encoder_before = _snapshot(model.denoiser), _snapshot(model.encoder)
    _, features = steps.encoder_step(model, optimizers.encoder, images, labels, pseudo, _settings(config), weights)
    assert _same(model.denoiser, denoiser_before), "step B must not touch ε_θ"
    assert not _same(model.encoder, encoder_before)

    encoder_before, denoiser_before = _snapshot(model.encoder), _snapshot(model.denoiser)
    steps.denoiser_step(model, optimizers.denoiser, features, labels, _settings(config), weights)
    assert _same(model.encoder, encoder_before), "step A must not touch E or G (BN buffers included)"
    assert not _same(model.denoiser, denoiser_before)


def test_collapse_guard_pushes_a_shrunken_encoder_back_and_is_silent_above_the_floor(toy_batch, new_model):
    """The guard's effect on one step's gradient, in float64 (no chaotic training involved): with
    E's features shrunk below the floor, a step along the guard's gradient widens every dimension
    that is under it; with the features above the floor the guard adds exactly nothing."""
    config = EndToEndConfig(ldm_to_encoder=True, collapse_guard=1.0, collapse_floor=0.5, standardizer_momentum=1.0)
    model, images, labels = _ready(config, toy_batch, new_model)
    model, images = model.double(), images.double()
    weights = steps.TermWeights(sem=1.0)

    def spread(candidate):
        """E's features as the joint step computes them (BN in train mode), on a copy."""
        with torch.no_grad():
            return copy.deepcopy(candidate).encoder.train().features(images).std(0, correction=0)

    def encoder_gradient(guard: float) -> dict[str, torch.Tensor]:
        trial = copy.deepcopy(model)
        trial.encoder.train()
        still = steps.Optimizers(torch.optim.SGD(trial.encoder.parameters(), lr=0.0), torch.optim.SGD(trial.denoiser.parameters(), lr=0.0))
        settings = _settings(EndToEndConfig(**{**config.model_dump(), "collapse_guard": guard}))
        steps.joint_step(trial, still, images, labels, settings, weights, generate=False, generator=torch.Generator().manual_seed(0))
        return {name: p.grad.clone() for name, p in trial.encoder.body.named_parameters()}

    # Above the floor (the starting features): the guard term is zero and so is its gradient.
    assert bool((spread(model) > model.feature_floor).all())
    with_guard, without = encoder_gradient(1.0), encoder_gradient(0.0)
    assert all(torch.equal(with_guard[name], without[name]) for name in without)

    # Shrink E's features (the BN's affine weight) far below the floor.
    with torch.no_grad():
        model.encoder.body[1].weight.mul_(0.02)
    shrunk = spread(model)
    assert bool((shrunk < 0.5 * model.feature_floor).all()), (shrunk, model.feature_floor)
    guard_only = {
        name: g - without_g for (name, g), without_g in zip(encoder_gradient(1.0).items(), encoder_gradient(0.0).values(), strict=True)
    }
    assert any(bool(g.abs().sum() > 0) for g in guard_only.values())
    trial = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in trial.encoder.body.named_parameters():
            parameter -= 1.0 * guard_only[name]
    widened = spread(trial)
    assert bool((widened > 1.5 * shrunk).all()), (widened, shrunk)
    assert variance_floor_loss(torch.ones(4, 2), torch.ones(2)) > 0
    assert variance_floor_loss(torch.tensor([[0.0, 0.0], [4.0, 4.0]]), torch.ones(2)) == 0


def test_ldm_term_is_the_shared_objective_on_the_same_draw(toy_batch, new_model):
    """e2e's L_LDM equals `denoising_loss` on the draws a same-seeded generator makes, for both
    predictions and every weighting."""
    for prediction in ("eps", "x0"):
        for weighting in ("none", "snr", "min_snr"):
            config = EndToEndConfig()
            model, _, labels = _ready(config, toy_batch, new_model)
            features = torch.randn(labels.shape[0], 4, generator=torch.Generator().manual_seed(5))
            diffusion = DiffusionConfig(num_steps=100, prediction=prediction, weighting=weighting)
            terms = steps.diffusion_terms(
                model, features, labels, _settings(config, diffusion=diffusion), steps.TermWeights(), torch.Generator().manual_seed(9)
            )
            scaled = model.standardizer.encode(features)
            t, noise = draw_timesteps_and_noise(labels.shape[0], 4, 100, 1, torch.Generator().manual_seed(9))
            expected = denoising_loss(model.denoiser, scaled, labels, t, noise, SCHEDULE, prediction, weighting).mean()
            assert torch.equal(terms["ldm"], expected), (prediction, weighting)


def test_strategy_schedules():
    c = EndToEndConfig(strategy="C", warmup_real_epochs=1, ldm_only_epochs=1, pseudo_share_start=0.1, pseudo_share=0.3)
    assert term_weights(c, 0.5, 4).sem == 0 and not term_weights(c, 0.5, 4).generation_on
    middle = term_weights(c, 1.5, 4)
    assert middle.sem > 0 and not middle.generation_on
    assert term_weights(c, 2.0, 4).pseudo_share == 0.1
    assert abs(term_weights(c, 3.0, 4).pseudo_share - 0.2) < 1e-12
    assert abs(term_weights(c, 4.0, 4).pseudo_share - 0.3) < 1e-12

    a = EndToEndConfig(strategy="A", semantic_warmup_epochs=2, eta_proto=0.4, semantic="rad", eta_rad=0.2, ge_every=3)
    assert term_weights(a, 0.0, 4).proto == 0 and term_weights(a, 1.0, 4).proto == 0.2 and term_weights(a, 3.0, 4).proto == 0.4
    assert term_weights(a, 3.0, 4).cov == 0 and term_weights(a, 3.0, 4).rad == 0.2
    assert [generates_at(a, s) for s in range(4)] == [True, False, False, True]
    assert steps.pseudo_count(70, 0.3) == 30 and steps.pseudo_count(70, 0.0) == 0


def test_pseudo_loss_drops_ood_samples_when_filtered(toy_batch, new_model):
    config = EndToEndConfig()
    model, _, _ = _ready(config, toy_batch, new_model)
    prototype = model.stats.means[0]
    radius = model.stats.radii()[0]
    direction = torch.zeros_like(prototype)
    direction[0] = 1.0
    near, far = prototype + 0.5 * radius * direction, prototype + 5 * radius * direction
    features, labels = torch.stack([near, far]), torch.tensor([0, 0])
    on = PseudoFilterConfig(enabled=True, radius="rms")
    losses = F.cross_entropy(model.classifier(features), labels, reduction="none")
    assert torch.allclose(steps.pseudo_loss(model, features, labels, _settings(config, on)), losses[0])
    assert torch.allclose(steps.pseudo_loss(model, features, labels, _settings(config)), losses.mean())
    model_copy = copy.deepcopy(model)
    assert torch.allclose(steps.pseudo_loss(model_copy, features, labels, _settings(config, on)), losses[0])
