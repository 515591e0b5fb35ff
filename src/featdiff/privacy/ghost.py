"""Per-example gradient norms without per-example gradients ("ghost clipping", as Opacus's
`grad_sample_mode="ghost"` does), exact for a network of Linear and Embedding layers.

For a Linear layer applied to an example's K rows with inputs a_k and output gradients g_k, the
example's weight gradient is Σ_k g_k a_kᵀ, whose squared Frobenius norm is
Σ_{k,l} (a_k·a_l)(g_k·g_l): two K×K Gram matrices per example instead of an out×in matrix; its
bias gradient is Σ_k g_k. An Embedding's gradient puts g_k on row y_k, so its squared norm is
Σ_{k,l: y_k = y_l} g_k·g_l. With these norms the clipped sum Σ_i min(1, C/‖∇L_i‖)·∇L_i is one more
backward pass of Σ_i c_i·L_i through the same graph: one forward, two backwards (the first to the layer outputs only), no B × P tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from featdiff.privacy.dp_sgd import Gradients, trainable


class GhostNorms:
    """Records, during one forward and backward, what every Linear and Embedding needs for its
    per-example gradient norms; `squared_norms()` then sums them per example."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
        covered = {id(p) for layer in self.layers for p in layer.parameters() if p.requires_grad}
        missing = [name for name, p in trainable(model).items() if id(p) not in covered]
        if missing:
            raise ValueError(f"ghost norms cover Linear and Embedding layers only; {missing[0]} is elsewhere: use per-example gradients")
        self.inputs: dict[nn.Module, Tensor] = {}
        self.outputs: dict[nn.Module, Tensor] = {}
        self.grads: dict[nn.Module, Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> GhostNorms:
        for layer in self.layers:
            self.handles.append(layer.register_forward_hook(self._forward))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _forward(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if layer in self.inputs:
            raise ValueError(f"{layer} is called twice in one forward: ghost norms need one call per layer")
        self.inputs[layer] = inputs[0].detach()
        if output.requires_grad:
            self.outputs[layer] = output

    def backward(self, loss: Tensor) -> None:
        """The gradients of `loss` with respect to every recorded layer output, keeping the graph
        (and computing no parameter gradient)."""
        layers = list(self.outputs)
        grads = torch.autograd.grad(loss, [self.outputs[layer] for layer in layers], retain_graph=True, allow_unused=True)
        self.grads = {layer: grad.detach() for layer, grad in zip(layers, grads, strict=True) if grad is not None}

    def squared_norms(self, batch: int) -> Tensor:
        """‖∇L_i‖² over all covered parameters, (B,): the rows of every input are grouped by the
        leading dimension (one example's K draws share it)."""
        total = None
        for layer in self.layers:
            if layer not in self.grads:
                continue
            grad = self.grads[layer].reshape(batch, -1, self.grads[layer].shape[-1])
            if isinstance(layer, nn.Linear):
                activation = self.inputs[layer].reshape(batch, -1, layer.in_features)
                norms = (activation @ activation.transpose(1, 2) * (grad @ grad.transpose(1, 2))).sum((1, 2))
                if layer.bias is not None and layer.bias.requires_grad:
                    norms = norms + grad.sum(1).square().sum(1)
            else:
                index = self.inputs[layer].reshape(batch, -1)
                same_row = (index[:, :, None] == index[:, None, :]).to(grad.dtype)
                norms = (grad @ grad.transpose(1, 2) * same_row).sum((1, 2))
            total = norms if total is None else total + norms
        return total


def ghost_clipped_sum(model: nn.Module, per_example_loss: Callable[[], Tensor], clip_norm: float) -> tuple[Gradients, Tensor]:
    """Σ_i min(1, C/‖∇L_i‖)·∇L_i over the trainable parameters, and the norms ‖∇L_i‖ (B,), for
    the per-example losses `per_example_loss()` returns. Leaves the parameters' .grad cleared."""
    with GhostNorms(model) as ghost:
        losses = per_example_loss()
    ghost.backward(losses.sum())
    norms = ghost.squared_norms(losses.shape[0]).clamp_min(0).sqrt()
    factors = (clip_norm / (norms + 1e-6)).clamp(max=1.0).detach()
    model.zero_grad(set_to_none=True)
    (losses * factors).sum().backward()
    summed = {name: p.grad.detach().clone() for name, p in trainable(model).items()}
    model.zero_grad(set_to_none=True)
    return summed, norms.detach()
