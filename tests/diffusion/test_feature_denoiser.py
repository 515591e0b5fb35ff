"""FeatureDenoiser: embedding, initialisation, the forward against a spelled-out reference, leading
shapes (learning a mixture is tested through the training loop in test_training.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featdiff.models.denoiser import FeatureDenoiser, sinusoidal_embedding
from featdiff.seeding import reset_parameters


@pytest.mark.parametrize("dim", [8, 9])
def test_sinusoidal_embedding_formula(dim: int) -> None:
    t = torch.tensor([0, 1, 17, 999])
    emb = sinusoidal_embedding(t, dim, max_period=10000.0)
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = t.numpy()[:, None].astype(np.float64) * freqs[None, :]
    expected = np.concatenate([np.cos(args), np.sin(args), np.zeros((4, dim % 2))], axis=1)
    assert emb.shape == (4, dim)
    np.testing.assert_allclose(emb.numpy(), expected, rtol=0, atol=1e-4)


def test_zero_init_starts_at_identity() -> None:
    model = FeatureDenoiser(16, 5)
    x = torch.randn(8, 16)
    t = torch.randint(0, 1000, (8,))
    y = torch.randint(0, 6, (8,))
    assert (model(x, t, y) == 0).all()
    h = torch.randn(8, model.width)
    cond = model.conditioning(t, y).split(model.width, dim=1)
    for block, c in zip(model.blocks, cond, strict=True):
        assert torch.equal(block(h, c), h)


def test_null_class_row() -> None:
    model = FeatureDenoiser(4, 10)
    assert model.null_class == 10 and model.class_emb.num_embeddings == 11
    out = model(torch.randn(3, 4), torch.tensor([0, 5, 9]), torch.full((3,), model.null_class))
    assert out.shape == (3, 4)


def _naive_forward(model: FeatureDenoiser, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Everything per sample and spelled out: the reference the fast path must equal."""
    w = model.width
    c = model.time_mlp(sinusoidal_embedding(t, model.time_dim).to(x.dtype)) + model.class_emb(y)
    cond = c @ model.cond_proj.weight.T + model.cond_proj.bias
    h = x @ model.input.weight.T + model.input.bias
    for i, block in enumerate(model.blocks):
        normed = (h - h.mean(1, keepdim=True)) / (h.var(1, correction=0, keepdim=True) + 1e-5).sqrt()
        hidden = F.silu(normed @ block.fc1.weight.T + cond[:, i * w : (i + 1) * w])
        h = h + hidden @ block.fc2.weight.T + block.fc2.bias
    normed = (h - h.mean(1, keepdim=True)) / (h.var(1, correction=0, keepdim=True) + 1e-5).sqrt()
    return normed @ model.output.weight.T + model.output.bias


def _random_denoiser(seed: int) -> FeatureDenoiser:
    """Float64, default initialisation everywhere (the zero-initialised layers too), so no path is hidden."""
    model = FeatureDenoiser(6, 7, width=32, depth=3, time_dim=16)
    reset_parameters(model, torch.Generator().manual_seed(seed))
    return model.double()


@pytest.mark.parametrize("pattern", ["shared_t", "few_pairs", "all_distinct"])
def test_forward_equals_the_spelled_out_reference(pattern: str) -> None:
    model = _random_denoiser(0)
    b = 64
    gen = torch.Generator().manual_seed(1)
    if pattern == "shared_t":  # as in sampling: one t, many labels
        t = torch.full((b,), 421)
        y = torch.randint(0, 8, (b,), generator=gen)
    elif pattern == "few_pairs":
        t = torch.tensor([3, 999, 500])[torch.randint(0, 3, (b,), generator=gen)]
        y = torch.randint(0, 2, (b,), generator=gen)
    else:  # as in training: t all over the place
        t = torch.randperm(1000, generator=gen)[:b]
        y = torch.randint(0, 8, (b,), generator=gen)
    x = torch.randn(b, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), _naive_forward(model, x, t, y), rtol=1e-10, atol=1e-10)


def test_leading_shapes_give_the_same_rows() -> None:
    """(B, K, D) inputs with (B, K) timesteps and labels are K draws per example: each row equals
    the (B·K, D) forward of the same row."""
    model = _random_denoiser(2)
    gen = torch.Generator().manual_seed(3)
    b, k = 10, 4
    x = torch.randn(b, k, 6, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (b, k), generator=gen)
    y = torch.randint(0, 8, (b, 1), generator=gen).expand(b, k)
    with torch.no_grad():
        nested = model(x, t, y)
        flat = model(x.reshape(b * k, 6), t.reshape(-1), y.reshape(-1))
        assert nested.shape == (b, k, 6)
        torch.testing.assert_close(nested.reshape(b * k, 6), flat, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(flat, _naive_forward(model, x.reshape(b * k, 6), t.reshape(-1), y.reshape(-1)), rtol=1e-10, atol=1e-10)
