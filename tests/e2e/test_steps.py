"""Which parameters each end-to-end step may change, and the collapse guard."""

import copy

import torch
import torch.nn.functional as F

from featdiff.config import EndToEndConfig, PseudoFilterConfig
from featdiff.diffusion.schedules import make_schedule
from featdiff.e2e import steps
from featdiff.e2e.losses import variance_floor_loss
from featdiff.e2e.strategies import generates_at, term_weights

SCHEDULE = make_schedule("cosine", 100)
NO_FILTER = PseudoFilterConfig()


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
    frozen, _ = steps.generate_pseudo(model, 6, SCHEDULE, config, differentiable=False, generator=torch.Generator().manual_seed(0))
    assert not frozen.requires_grad
    live, labels = steps.generate_pseudo(model, 6, SCHEDULE, config, differentiable=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frozen, live)
    F.cross_entropy(model.classifier(live), labels).backward()
    grads = [p.grad for p in model.denoiser.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # The same check through finite differences on one weight: the sampler really depends on it.
    weight = model.denoiser.output.weight
    with torch.no_grad():
        weight[0, 0] += 1e-3
    shifted, _ = steps.generate_pseudo(model, 6, SCHEDULE, config, differentiable=False, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(shifted, frozen)


def test_joint_step_routes_ge_to_the_denoiser_only_when_configured(toy_batch, new_model):
    only_generation = steps.TermWeights(sem=0.0, ge=1.0, pseudo_share=0.5)
    for to_denoiser in (False, True):
        config = EndToEndConfig(ge_to_denoiser=to_denoiser, ge_sample_steps=2)
        model, images, labels = _ready(config, toy_batch, new_model)
        before = _snapshot(model.denoiser)
        steps.joint_step(model, _optimizers(model), images, labels, SCHEDULE, config, NO_FILTER, only_generation, generate=True)
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
            steps.joint_step(model, still, images, labels, SCHEDULE, config, NO_FILTER, weights, generate=False)
            grads.append(model.encoder.body[0].weight.grad.clone())
        assert torch.equal(grads[0], grads[1]) is (not to_encoder)


def test_strategy_b_steps_leave_frozen_parameters_bit_identical(toy_batch, new_model):
    config = EndToEndConfig(strategy="B", ge_sample_steps=2, semantic="cov", eta_cov=0.1)
    model, images, labels = _ready(config, toy_batch, new_model)
    optimizers = _optimizers(model)
    weights = term_weights(config, epoch=1.0, total_epochs=2.0)
    pseudo = steps.frozen_pseudo(model, 8, SCHEDULE, config)

    denoiser_before, encoder_before = _snapshot(model.denoiser), _snapshot(model.encoder)
    _, features = steps.encoder_step(model, optimizers.encoder, images, labels, pseudo, config, NO_FILTER, weights)
    assert _same(model.denoiser, denoiser_before), "step B must not touch ε_θ"
    assert not _same(model.encoder, encoder_before)

    encoder_before, denoiser_before = _snapshot(model.encoder), _snapshot(model.denoiser)
    steps.denoiser_step(model, optimizers.denoiser, features, labels, SCHEDULE, config, weights)
    assert _same(model.encoder, encoder_before), "step A must not touch E or G (BN buffers included)"
    assert not _same(model.denoiser, denoiser_before)


def test_collapse_guard_keeps_the_features_spread(toy_batch, new_model):
    """Trained on L_LDM alone with its gradient reaching E, the encoder shrinks its features; the
    variance floor stops it."""
    spreads = {}
    for guard in (0.0, 10.0):
        config = EndToEndConfig(ldm_to_encoder=True, collapse_guard=guard, collapse_floor=0.5, standardizer_momentum=1.0)
        model, images, labels = _ready(config, toy_batch, new_model)
        start = model.encoder.eval().features(images).std(0).detach()
        model.encoder.train()
        encoder_only = torch.optim.SGD(model.encoder.body.parameters(), lr=0.05)
        frozen_denoiser = torch.optim.SGD(model.denoiser.parameters(), lr=0.0)
        generator = torch.Generator().manual_seed(0)
        for _ in range(300):
            steps.joint_step(
                model,
                steps.Optimizers(encoder_only, frozen_denoiser),
                images,
                labels,
                SCHEDULE,
                config,
                NO_FILTER,
                steps.TermWeights(sem=1.0),
                generate=False,
                generator=generator,
            )
        spreads[guard] = (model.encoder.eval().features(images).std(0).detach() / start).min().item()
    assert spreads[0.0] < 0.3, spreads
    assert spreads[10.0] > 0.4, spreads
    assert variance_floor_loss(torch.ones(4, 2), torch.ones(2)) > 0


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
    assert torch.allclose(steps.pseudo_loss(model, features, labels, config, on), losses[0])
    assert torch.allclose(steps.pseudo_loss(model, features, labels, config, NO_FILTER), losses.mean())
    model_copy = copy.deepcopy(model)
    assert torch.allclose(steps.pseudo_loss(model_copy, features, labels, config, on), losses[0])
