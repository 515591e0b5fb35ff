"""The class-conditional denoiser for feature vectors: a residual MLP.

Features are 64-d vectors with no spatial structure, so LDMLR's 1-D U-Net (kernel-1 convolutions
over a length-64 'sequence', 7.8 M parameters) buys nothing over an MLP of a tenth the size, and
an MLP is what makes generating tens of thousands of features with 50 DDIM steps take seconds on
a CPU.

Conditioning c = time_mlp(sinusoid(t)) + class_emb(y) enters every block through a linear
projection. Being linear, the projection splits into a part that depends only on t and one that
depends only on y, so it is evaluated on the distinct timesteps and the distinct labels of the
batch and then gathered: during sampling every sample shares t, which turns B projections into
one (plus one per class present), with the same result as projecting per sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style features of the (integer) timestep, geometric frequencies from 1 down to
    1/max_period, so that nearby and distant timesteps are both distinguishable; (cos, sin)
    halves, zero-padded when dim is odd."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
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
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        # addmm adds the conditioning inside the matmul instead of in a separate pass over (B, W).
        hidden = torch.addmm(cond, self.norm(h), self.fc1.weight.t())
        return h + self.fc2(self.dropout(F.silu(hidden)))


class FeatureDenoiser(nn.Module):
    """Predicts ε (or x0) for noisy features x_t (B, D) at timesteps t (B,) and labels y (B,).

    Row `null_class` = num_classes of the class embedding is the 'no label' token, for
    label-free and classifier-free-guidance training. The output layer starts at zero, so an
    untrained model predicts 0 (the prior mean of ε).
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
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def conditioning(self, t: Tensor, y: Tensor) -> Tensor:
        """cond_proj(time_mlp(sinusoid(t)) + class_emb(y)), shape (B, depth * width), evaluated on
        distinct timesteps and labels only (see the module docstring)."""
        t_unique, t_index = torch.unique(t, return_inverse=True)
        y_unique, y_index = torch.unique(y, return_inverse=True)
        sinusoid = sinusoidal_embedding(t_unique, self.time_dim).to(self.class_emb.weight.dtype)
        time_emb = self.time_mlp(sinusoid)
        time_part = F.linear(time_emb, self.cond_proj.weight)
        class_part = self.cond_proj(self.class_emb(y_unique))
        if t_unique.numel() * y_unique.numel() <= t.numel():
            # Few (t, y) pairs, as when sampling: one gather from their sum table is cheaper than
            # two gathers and an add over the batch.
            table = (time_part[:, None, :] + class_part[None, :, :]).flatten(0, 1)
            return table.index_select(0, t_index * y_unique.numel() + y_index)
        return time_part.index_select(0, t_index) + class_part.index_select(0, y_index)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        cond = self.conditioning(t, y).split(self.width, dim=1)
        h = self.input(x_t)
        for block, cond_block in zip(self.blocks, cond, strict=True):
            h = block(h, cond_block)
        return self.output(self.out_norm(h))
