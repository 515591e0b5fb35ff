"""DP-SGD pieces: K draws averaged before clipping, the two per-example paths, the noise."""

import pytest
import torch

from featdiff.diffusion.objective import DenoisingObjective, draw_timesteps_and_noise
from featdiff.diffusion.schedules import make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.privacy.dp_sgd import clipped_sum, functorch_gradients, noised_mean, opacus_gradients, per_example_norms
from featdiff.training.state import PoissonBatches

SCHEDULE = make_schedule("cosine", 100)
OBJECTIVE = DenoisingObjective(SCHEDULE)


def _model_and_batch(batch=6, draws=4, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    model = FeatureDenoiser(8, 5, width=32, depth=2, time_dim=16).to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    x0 = torch.randn(batch, 8, generator=generator, dtype=dtype)
    y = torch.randint(0, 6, (batch,), generator=generator)
    t, noise = draw_timesteps_and_noise(batch, 8, 100, draws, generator, dtype=dtype)
    return model, x0, y, t, noise


def test_k_draws_averaged_before_clipping_keep_each_contribution_within_c():
    model, x0, y, t, noise = _model_and_batch()
    clip = 0.05
    gradients = functorch_gradients(model, x0, y, t, noise, OBJECTIVE)
    assert bool((per_example_norms(gradients) > clip).all()), "the test needs every example to be clipped"
    for i in range(x0.shape[0]):
        alone = {name: g[i : i + 1] for name, g in gradients.items()}
        summed, _ = clipped_sum(alone, clip)
        assert float(per_example_norms({k: v[None] for k, v in summed.items()})) <= clip * (1 + 1e-9)
    # Counted as K separate records, each draw is clipped to C on its own, so one example moves the
    # sum by up to K·C (exactly, when its draws coincide), which the accountant does not assume.
    same_t, same_noise = t[:1, :1].expand(4, 1), noise[:1, :1].expand(4, 1, 8)
    rows = functorch_gradients(model, x0[:1].expand(4, -1), y[:1].expand(4), same_t, same_noise, OBJECTIVE)
    as_records, _ = clipped_sum(rows, clip)
    assert float(per_example_norms({k: v[None] for k, v in as_records.items()})) == pytest.approx(4 * clip, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functorch_and_opacus_give_the_same_clipped_gradient_sum(dtype):
    model, x0, y, t, noise = _model_and_batch(dtype=dtype)
    objective = DenoisingObjective(SCHEDULE, "x0", "min_snr")
    by_func, norms_func = clipped_sum(functorch_gradients(model, x0, y, t, noise, objective), 0.05)
    by_opacus, norms_opacus = clipped_sum(opacus_gradients(model, x0, y, t, noise, objective), 0.05)
    torch.testing.assert_close(norms_func, norms_opacus, rtol=1e-5, atol=1e-6)
    for name in by_func:
        torch.testing.assert_close(by_func[name], by_opacus[name], rtol=0, atol=1e-6, msg=name)
    assert not hasattr(next(model.parameters()), "grad_sample") or next(model.parameters()).grad_sample is None


def test_noise_has_std_sigma_c_over_the_expected_batch():
    summed = {"w": torch.zeros(200_000, dtype=torch.float64)}
    private = noised_mean(summed, clip_norm=0.5, noise_multiplier=2.0, expected_batch=10.0, generator=torch.Generator().manual_seed(1))
    # Sample std of 2e5 normals: relative standard error 0.16 %.
    assert float(private["w"].std()) == pytest.approx(2.0 * 0.5 / 10.0, rel=0.01)
    assert abs(float(private["w"].mean())) < 5 * 0.1 / 200_000**0.5


def test_poisson_batches_include_each_record_independently_and_resume():
    batches = PoissonBatches(1000, 0.1, torch.Generator().manual_seed(2))
    sizes = torch.tensor([len(batches.next()) for _ in range(400)], dtype=torch.float64)
    assert batches.epoch == 39 and batches.epoch_finished
    # Binomial(1000, 0.1): mean 100, std 9.5; the mean of 400 batches has std 0.47.
    assert float(sizes.mean()) == pytest.approx(100, abs=2.5)
    assert float(sizes.std()) == pytest.approx(9.49, rel=0.15)
    saved, generator_state = batches.state_dict(), batches.generator.get_state()
    following = batches.next()
    again = PoissonBatches(1000, 0.1, torch.Generator())
    again.load_state_dict(saved)
    again.generator.set_state(generator_state)
    assert torch.equal(again.next(), following) and again.epoch == 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ghost_clipping_equals_clipping_materialised_per_example_gradients(dtype):
    from featdiff.privacy.ghost import ghost_clipped_sum

    model, x0, y, t, noise = _model_and_batch(batch=7, draws=4, dtype=dtype)
    exact = functorch_gradients(model, x0, y, t, noise, OBJECTIVE)
    expected, expected_norms = clipped_sum(exact, 0.05)
    summed, norms = ghost_clipped_sum(model, lambda: OBJECTIVE.loss(model, x0, y, t, noise), 0.05)
    torch.testing.assert_close(norms, expected_norms, rtol=1e-5, atol=1e-7)
    for name in expected:
        torch.testing.assert_close(summed[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert all(p.grad is None for p in model.parameters())
