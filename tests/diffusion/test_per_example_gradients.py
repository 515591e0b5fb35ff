"""Per-example gradients of the denoising objective (what DP-SGD clips), the draws they are taken
at, and the shared-timestep fast path of the denoiser.

The reference for every per-example gradient is a loop of single-example backward passes through
a loss spelled out here from the schedule's ᾱ (not `denoising_loss`), so these tests pin down both
the objective and the two batched machineries: `torch.func` (`vmap(grad(...))`) and Opacus's
`GradSampleModule`, which sees each example's K noise draws as K rows of one example.
"""

import pytest
import torch
from opacus import GradSampleModule
from torch.func import functional_call, grad, vmap

from featdiff.diffusion.objective import denoising_loss, draw_timesteps_and_noise
from featdiff.diffusion.schedules import make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.seeding import reset_parameters

T = 200
B, K, D, C = 6, 4, 8, 5
GAMMA = 2.0


def _random_denoiser(
    seed: int,
    dtype: torch.dtype = torch.float64,
    feature_dim: int = D,
    num_classes: int = C,
    width: int = 32,
    depth: int = 2,
    time_dim: int = 16,
) -> FeatureDenoiser:
    """The real network with PyTorch's default initialisation everywhere, the zero-initialised
    fc2 and output layers included, so that every parameter gets a non-trivial gradient."""
    model = FeatureDenoiser(feature_dim, num_classes, width=width, depth=depth, time_dim=time_dim)
    reset_parameters(model, torch.Generator().manual_seed(seed))
    assert all(p.abs().sum() > 0 for p in model.parameters())
    return model.to(dtype)


def _batch(seed: int, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, D, generator=gen, dtype=dtype)
    y = torch.tensor([0, 3, 5, 3, 1, 4])  # repeated labels and the null class (5)
    t, noise = draw_timesteps_and_noise(B, D, T, draws=K, generator=gen, dtype=dtype)
    return x0, y, t, noise


def _reference_loss(model, x0, y, t, noise, schedule, prediction, weighting):
    """One example (x0 (D,), y (), t (K,), noise (K, D)), written out: mean over its K draws of
    weight(t) · mean_d (model output - target)²."""
    ac = schedule.alphas_cumprod[t].to(x0.dtype)
    x_t = ac.sqrt()[:, None] * x0 + (1 - ac).sqrt()[:, None] * noise
    output = model(x_t, t, y.expand(K))
    target = noise if prediction == "eps" else x0.expand(K, D)
    ratio = ac / (1 - ac)
    if weighting == "none":
        weight = torch.ones_like(ratio)
    elif weighting == "snr":
        weight = ratio
    else:
        weight = ratio.clamp(max=GAMMA) / (ratio if prediction == "eps" else 1.0)
    return (weight * (output - target).square().mean(1)).mean()


def _loop_gradients(model, x0, y, t, noise, schedule, prediction, weighting) -> dict[str, torch.Tensor]:
    """Per-example gradients by B separate backward passes, stacked to (B, *param.shape)."""
    names = [name for name, _ in model.named_parameters()]
    per_example = []
    for i in range(B):
        loss = _reference_loss(model, x0[i], y[i], t[i], noise[i], schedule, prediction, weighting)
        per_example.append(torch.autograd.grad(loss, list(model.parameters())))
    return {name: torch.stack([grads[j] for grads in per_example]) for j, name in enumerate(names)}


def _assert_gradients_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], y: torch.Tensor) -> None:
    assert actual.keys() == expected.keys()
    for name, reference in expected.items():
        assert actual[name].shape == reference.shape, name
        scale = reference.abs().max().item()
        torch.testing.assert_close(actual[name], reference, rtol=1e-8, atol=1e-9 * scale, msg=name)
        if name == "class_emb.weight":
            # Example i touches only its own label's row.
            rows = reference.abs().sum(-1) > 0
            assert torch.equal(rows, torch.nn.functional.one_hot(y, C + 1).bool()), rows
        else:
            assert (reference.flatten(1).norm(dim=1) > 0).all(), f"{name}: a zero per-example gradient tests nothing"


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("weighting", ["none", "snr", "min_snr"])
def test_torch_func_per_example_gradients_equal_single_example_backward(prediction: str, weighting: str) -> None:
    schedule = make_schedule("cosine", T)
    model = _random_denoiser(0)
    x0, y, t, noise = _batch(1)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def one_example_loss(params, x0_i, y_i, t_i, noise_i):
        def stateless(x_t, t_, y_):
            return functional_call(model, params, (x_t, t_, y_))

        loss = denoising_loss(stateless, x0_i[None], y_i[None], t_i[None], noise_i[None], schedule, prediction, weighting, GAMMA)
        return loss[0]

    per_example = vmap(grad(one_example_loss), in_dims=(None, 0, 0, 0, 0))(params, x0, y, t, noise)
    expected = _loop_gradients(model, x0, y, t, noise, schedule, prediction, weighting)
    _assert_gradients_equal(per_example, expected, y)
    # Their sum is the gradient of the summed batch loss.
    model.zero_grad()
    denoising_loss(model, x0, y, t, noise, schedule, prediction, weighting, GAMMA).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(per_example[name].sum(0), p.grad, rtol=1e-8, atol=1e-9 * p.grad.abs().max().item(), msg=name)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_opacus_grad_sample_sums_the_k_draws_of_each_example(reduction: str, dtype: torch.dtype) -> None:
    """One call on the (B, K, D) batch; Opacus's Linear and Embedding samplers sum each example's K
    rows. With loss_reduction "sum" the loss is Σ_i loss_i, with "mean" it is (1/B) Σ_i loss_i and
    Opacus rescales by B (not B·K): either way grad_sample[i] is ∇ loss_i."""
    schedule = make_schedule("cosine", T)
    model = _random_denoiser(2, dtype)
    x0, y, t, noise = _batch(3, dtype)
    prediction, weighting = "x0", "min_snr"
    expected = _loop_gradients(model, x0, y, t, noise, schedule, prediction, weighting)

    wrapped = GradSampleModule(model, loss_reduction=reduction)
    loss = denoising_loss(wrapped, x0, y, t, noise, schedule, prediction, weighting, GAMMA)
    assert loss.shape == (B,)
    (loss.sum() if reduction == "sum" else loss.mean()).backward()
    grad_sample = {name: p.grad_sample for name, p in model.named_parameters()}
    wrapped._close()
    if dtype == torch.float64:
        _assert_gradients_equal(grad_sample, expected, y)
    else:
        for name, reference in expected.items():
            scale = reference.abs().max().item()
            torch.testing.assert_close(grad_sample[name], reference, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_draws_respect_the_timestep_range_and_shapes() -> None:
    gen = torch.Generator().manual_seed(4)
    t, noise = draw_timesteps_and_noise(2000, 3, 50, draws=3, generator=gen, low=10, high=20)
    assert t.shape == (2000, 3) and t.dtype == torch.int64
    assert noise.shape == (2000, 3, 3) and noise.dtype == torch.float32
    assert set(t.unique().tolist()) == set(range(10, 20))  # all of [10, 20), nothing else
    t, _ = draw_timesteps_and_noise(2000, 3, 50, generator=gen)
    assert set(t.unique().tolist()) == set(range(50))  # default: every timestep
    for low, high in [(5, 5), (6, 5), (-1, 10), (0, 51)]:
        with pytest.raises(ValueError):
            draw_timesteps_and_noise(4, 3, 50, low=low, high=high)
    with pytest.raises(ValueError):
        draw_timesteps_and_noise(4, 3, 50, draws=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("low, high", [(0, None), (300, 700)])
def test_one_draw_reproduces_the_old_stream(low: int, high: int | None, dtype: torch.dtype) -> None:
    """K = 1 consumes the generator exactly as the old (B,) / (B, D) draws did: t first, then ε."""
    gen = torch.Generator().manual_seed(5)
    old_t = torch.randint(low, high or 1000, (16,), generator=gen)
    old_noise = torch.randn(16, 7, generator=gen, dtype=dtype)
    t, noise = draw_timesteps_and_noise(16, 7, 1000, generator=torch.Generator().manual_seed(5), dtype=dtype, low=low, high=high)
    assert t.shape == (16, 1) and noise.shape == (16, 1, 7) and noise.dtype == dtype
    assert torch.equal(t[:, 0], old_t) and torch.equal(noise[:, 0], old_noise)


@pytest.mark.parametrize("leading", [(64,), (16, 3)])
def test_shared_timestep_path_equals_forward(leading: tuple[int, ...]) -> None:
    model = _random_denoiser(6, feature_dim=6, num_classes=7, depth=3)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(*leading, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 8, leading, generator=gen)  # several labels, the null class included
    assert y.unique().numel() >= 5
    with torch.no_grad():
        for t in [0, 1, 421, 999]:
            fast = model.forward_shared_timestep(x, t, y)
            plain = model(x, torch.full(leading, t), y)
            assert fast.shape == x.shape
            torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
