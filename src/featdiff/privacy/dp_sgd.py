"""DP-SGD for the denoiser: per-example gradients of the denoising objective, clipped, summed,
noised — and the optimizer's step left unchanged, as Opacus's `make_private` does.

An example's K noise draws are one record's contribution: its loss is the mean over its draws
(`featdiff.diffusion.objective`), so its gradient is averaged over the draws *before* clipping,
and the clipped contribution has norm ≤ C whatever K is. Treating the K draws as K examples would
make the sensitivity K·C while the accountant assumes C.

Two ways to the per-example gradients, which a test shows equal:
- `functorch_gradients`: `torch.func.vmap(grad(...))` over examples, the fast path on a CPU;
- `opacus_gradients`: Opacus's `GradSampleModule` hooks on one call over the (B, K, D) batch
  (its Linear and Embedding samplers sum each example's K rows), the reference.

Noise is added to the clipped sum with std σ·C and the result divided by the *expected* batch
size q·N, not the realised one (dividing by the realised size leaks beyond the accounting).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from featdiff.diffusion.objective import DenoisingObjective

Gradients = dict[str, Tensor]
"""Parameter name -> per-example gradients (B, *shape), or a summed gradient (*shape)."""


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def functorch_gradients(model: nn.Module, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor, objective: DenoisingObjective) -> Gradients:
    """Per-example gradients (B, ...) of `objective.loss` (each example's mean over its K draws)."""
    params = {name: p.detach() for name, p in trainable(model).items()}
    frozen = {name: p.detach() for name, p in model.named_parameters() if name not in params}
    buffers = dict(model.named_buffers())

    def single(params: Gradients, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        def denoiser(x_t: Tensor, t_: Tensor, y_: Tensor) -> Tensor:
            return functional_call(model, (params, frozen, buffers), (x_t, t_, y_))

        return objective.loss(denoiser, x0[None], y[None], t[None], noise[None])[0]

    return vmap(grad(single), in_dims=(None, 0, 0, 0, 0))(params, x0, y, t, noise)


def opacus_gradients(model: nn.Module, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor, objective: DenoisingObjective) -> Gradients:
    """The same per-example gradients through Opacus's hooks (one forward over (B, K, D))."""
    from opacus import GradSampleModule

    wrapped = GradSampleModule(model, loss_reduction="sum")
    try:
        wrapped.zero_grad(set_to_none=True)
        objective.loss(wrapped, x0, y, t, noise).sum().backward()
        return {name: p.grad_sample.detach().clone() for name, p in trainable(model).items()}
    finally:
        wrapped.zero_grad(set_to_none=True)
        wrapped.to_standard_module()


def per_example_norms(gradients: Gradients) -> Tensor:
    """‖g_i‖ over all parameters, (B,)."""
    return torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gradients.values()))


def clipped_sum(gradients: Gradients, clip_norm: float) -> tuple[Gradients, Tensor]:
    """Σ_i g_i·min(1, C/‖g_i‖) and the per-example norms before clipping."""
    norms = per_example_norms(gradients)
    factors = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
    return {name: torch.einsum("b,b...->...", factors, g) for name, g in gradients.items()}, norms


def noised_mean(
    summed: Gradients, *, clip_norm: float, noise_multiplier: float, expected_batch: float, generator: torch.Generator
) -> Gradients:
    """(Σ clipped + N(0, σ²C²·I)) / (q·N): the private gradient. `generator` is the private one
    (`featdiff.privacy.noise`): whoever can replay it can subtract the noise."""
    return {
        name: (g + noise_multiplier * clip_norm * torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device))
        / expected_batch
        for name, g in summed.items()
    }


def apply_private_gradients(model: nn.Module, gradients: Gradients, optimizer: torch.optim.Optimizer) -> None:
    """Set every trainable parameter's .grad to the private gradient and take the optimizer's step."""
    for name, parameter in trainable(model).items():
        parameter.grad = gradients[name].to(parameter.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


PerExampleGradients = Callable[[nn.Module, Tensor, Tensor, Tensor, Tensor, DenoisingObjective], Gradients]
PATHS: dict[str, PerExampleGradients] = {"functorch": functorch_gradients, "opacus": opacus_gradients}


def chunked_clipped_sum(
    path: str,
    model: nn.Module,
    x0: Tensor,
    y: Tensor,
    t: Tensor,
    noise: Tensor,
    objective: DenoisingObjective,
    *,
    clip_norm: float,
    chunk: int = 128,
) -> tuple[Gradients, Tensor]:
    """The clipped sum through materialised per-example gradients, `chunk` examples at a time
    (B × P floats at once would be gigabytes for the default denoiser and a batch of 1024)."""
    total: Gradients = {name: torch.zeros_like(p) for name, p in trainable(model).items()}
    norms = []
    for start in range(0, len(x0), chunk):
        part = slice(start, start + chunk)
        gradients = PATHS[path](model, x0[part], y[part], t[part], noise[part], objective)
        summed, part_norms = clipped_sum(gradients, clip_norm)
        for name in total:
            total[name] += summed[name]
        norms.append(part_norms)
    return total, torch.cat(norms) if norms else x0.new_zeros(0)
