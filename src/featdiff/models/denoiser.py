"""The class-conditional denoiser for feature vectors: a residual MLP.

Features are 64-d vectors with no spatial structure, so LDMLR's 1-D U-Net (kernel-1 convolutions
over a length-64 'sequence', 7.8 M parameters) buys nothing over an MLP of a tenth the size, and
an MLP is what makes generating tens of thousands of features with 50 DDIM steps take seconds on
a CPU.

Conditioning c = cond_proj(time_mlp(sinusoid(t)) + class_emb(y)) enters every block. The training
forward is per sample: every layer is called as a module on inputs of any leading shape (B, ...),
with no data-dependent shapes, so that `torch.func.vmap(grad(...))` and Opacus's
`GradSampleModule` compute per-example gradients of it (DP-SGD). Inputs shaped (B, K, D) carry K
noise draws of one example, and Opacus then sums each example's K rows into one per-example
gradient.

Sampling calls `forward_shared_timestep`: all samples of a step share t, and the projection is
linear, so it splits into one time part (computed once) and a table of class parts (one row per
class) that is gathered. It equals `forward` up to float rounding (a test checks it in float64)
and skips the per-sample conditioning, about 40 % of the network's multiply-adds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style features of the (integer) timestep, shape t.shape + (dim,): geometric
    frequencies from 1 down to 1/max_period, so that nearby and distant timesteps are both
    distinguishable; (cos, sin) halves, zero-padded when dim is odd."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[..., None] * freqs
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class ResidualBlock(nn.Module):
    """h + W2 · dropout(SiLU(W1 · LN(h) + c_block)).

    LayerNorm has no affine parameters and W1 no bias: both are absorbed exactly by W1 and by
    the conditioning projection's bias. W2 starts at zero, so the block starts as the identity.
    """

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.fc1 = nn.Linear(width, width, bias=False)
        self.fc2 = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.zero_init()

    def zero_init(self) -> None:
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        return h + self.fc2(self.dropout(F.silu(self.fc1(self.norm(h)) + cond)))

    def forward_fused(self, h: Tensor, cond: Tensor) -> Tensor:
        """`forward` for 2-D batches with the conditioning added inside W1's matmul (addmm), one
        pass over (B, width) fewer: the sampling path, where no per-example hook is needed."""
        return h + self.fc2(self.dropout(F.silu(torch.addmm(cond, self.norm(h), self.fc1.weight.t()))))


class FeatureDenoiser(nn.Module):
    """Predicts ε (or x0) for noisy features x_t (..., D) at timesteps t (...) and labels y (...).

    Row `null_class` = num_classes of the class embedding is the 'no label' token, for
    label-free training (dp-promise's first phase) and classifier-free guidance. The output layer
    starts at zero, so an untrained model predicts 0 (the prior mean of ε).
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        width: int = 256,
        depth: int = 3,
        time_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.null_class = num_classes
        self.width = width
        self.depth = depth
        self.time_dim = time_dim
        self.input = nn.Linear(feature_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(num_classes + 1, width)
        # All blocks' projections stacked into one matrix: one matmul instead of `depth`.
        self.cond_proj = nn.Linear(width, depth * width)
        self.blocks = nn.ModuleList(ResidualBlock(width, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.output = nn.Linear(width, feature_dim)
        self.zero_init()

    def zero_init(self) -> None:
        """The zero starts that make an untrained model the identity per block and 0 at the output
        (re-applied by `featdiff.seeding.initialise` after a seeded reset)."""
        for block in self.blocks:
            block.zero_init()
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def conditioning(self, t: Tensor, y: Tensor) -> Tensor:
        """cond_proj(time_mlp(sinusoid(t)) + class_emb(y)), shape t.shape + (depth * width,)."""
        sinusoid = sinusoidal_embedding(t, self.time_dim).to(self.class_emb.weight.dtype)
        return self.cond_proj(self.time_mlp(sinusoid) + self.class_emb(y))

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        h = self.input(x_t)
        for block, cond_block in zip(self.blocks, self.conditioning(t, y).split(self.width, dim=-1), strict=True):
            h = block(h, cond_block)
        return self.output(self.out_norm(h))

    def forward_shared_timestep(self, x_t: Tensor, t: int, y: Tensor) -> Tensor:
        """`forward` for a batch whose samples all sit at timestep t (every sampling step)."""
        sinusoid = sinusoidal_embedding(torch.tensor([t], device=x_t.device), self.time_dim).to(self.class_emb.weight.dtype)
        time_part = F.linear(self.time_mlp(sinusoid), self.cond_proj.weight)
        class_table = self.cond_proj(self.class_emb.weight) + time_part
        cond = class_table.index_select(0, y.flatten())
        h = self.input(x_t.reshape(-1, self.feature_dim))
        for block, cond_block in zip(self.blocks, cond.split(self.width, dim=-1), strict=True):
            h = block.forward_fused(h, cond_block)
        return self.output(self.out_norm(h)).view(*x_t.shape)
