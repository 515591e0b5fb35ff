"""Feature scalers: statistics against float64 references, round trips, serialisation, EMA updates."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from featdiff.diffusion.scaling import RunningStandardizer, Standardizer, UnitIntervalMap


def _features(seed: int = 0) -> torch.Tensor:
    """ReLU-like features: non-negative, unbounded, one dead (constant zero) dimension."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(2000, 6, generator=gen) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0, 1.0]) + 0.5)
    x[:, 5] = 0
    return x


def test_standardizer_statistics_match_float64_reference() -> None:
    x = _features()
    scaler = Standardizer.fitted(x)
    x64 = x.double()
    mean = x64.sum(0) / x64.shape[0]
    std = ((x64 - mean) ** 2).sum(0).div(x64.shape[0]).sqrt()
    torch.testing.assert_close(scaler.mean.double(), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(scaler.std[:5].double(), std[:5], rtol=1e-6, atol=0)
    assert scaler.std[5].item() == pytest.approx(1e-6)  # floored, not zero
    z = scaler.encode(x)
    live = z[:, :5].double()
    torch.testing.assert_close(live.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(live.std(0, correction=0), torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.isfinite(z).all() and (z[:, 5] == 0).all()


def test_standardizer_round_trip_and_state_dict(tmp_path) -> None:
    x = _features(1)
    scaler = Standardizer.fitted(x)
    torch.testing.assert_close(scaler.decode(scaler.encode(x)), x, rtol=1e-5, atol=1e-5)
    path = tmp_path / "scaler.safetensors"
    save_file(scaler.state_dict(), str(path))
    restored = Standardizer(6)
    restored.load_state_dict(load_file(str(path)))
    assert torch.equal(restored.mean, scaler.mean) and torch.equal(restored.std, scaler.std)
    assert torch.equal(restored.encode(x), scaler.encode(x))
    with pytest.raises(RuntimeError):
        Standardizer(6).load_state_dict({"mean": scaler.mean})


def test_unit_interval_map_is_ldmlr_normalisation() -> None:
    x = _features(2)
    scaler = UnitIntervalMap()
    torch.testing.assert_close(scaler.encode(x), x * 2 - 1)
    torch.testing.assert_close(scaler.decode(scaler.encode(x)), x)
    # LDMLR clamps x̂0 to [-1, 1]: decoded, that is [0, 1], cutting off every feature above 1.
    clamped = scaler.decode(scaler.encode(x).clamp(-1, 1))
    assert clamped.max() == 1.0 and (x > 1).any()
    assert scaler.state_dict() == {}


def test_running_standardizer_ema_and_shared_map() -> None:
    """The EMA variant moves mean and variance by the momentum, and encodes exactly as the fixed
    one does with the same statistics."""
    scaler = RunningStandardizer(2, momentum=0.25)
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    scaler.update(a)
    assert scaler.mean.tolist() == [1.0, 2.0] and scaler.std.tolist() == [1.0, 1.0]
    b = torch.tensor([[4.0, 0.0], [8.0, 0.0]])
    scaler.update(b)
    assert torch.allclose(scaler.mean, torch.tensor([0.75 * 1 + 0.25 * 6, 0.75 * 2 + 0.25 * 0]))
    assert torch.allclose(scaler.std.square(), torch.tensor([0.75 * 1 + 0.25 * 4, 0.75 * 1 + 0.25 * 0]))
    fixed = Standardizer(2)
    fixed.mean.copy_(scaler.mean)
    fixed.std.copy_(scaler.std)
    x = torch.randn(5, 2)
    assert torch.equal(fixed.encode(x), scaler.encode(x))
    assert torch.allclose(scaler.decode(scaler.encode(x)), x, atol=1e-6)
    refit = RunningStandardizer(6)
    refit.fit(_features(3))
    assert bool(refit.initialized)
    assert torch.equal(refit.mean, Standardizer.fitted(_features(3)).mean)
