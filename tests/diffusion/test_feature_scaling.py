"""Feature scalers: statistics against float64 references, round trips, serialisation."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from featdiff.diffusion.scaling import Standardizer, UnitIntervalMap


def _features(seed: int = 0) -> torch.Tensor:
    """ReLU-like features: non-negative, unbounded, one dead (constant zero) dimension."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(2000, 6, generator=gen) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0, 1.0]) + 0.5)
    x[:, 5] = 0
    return x


def test_standardizer_statistics_match_float64_reference() -> None:
    x = _features()
    scaler = Standardizer.fit(x)
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
    scaler = Standardizer.fit(x)
    torch.testing.assert_close(scaler.decode(scaler.encode(x)), x, rtol=1e-5, atol=1e-5)
    path = tmp_path / "scaler.safetensors"
    save_file(scaler.state_dict(), str(path))
    restored = Standardizer.from_state_dict(load_file(str(path)))
    assert torch.equal(restored.mean, scaler.mean) and torch.equal(restored.std, scaler.std)
    assert torch.equal(restored.encode(x), scaler.encode(x))
    with pytest.raises(ValueError):
        Standardizer.from_state_dict({"mean": scaler.mean})


def test_unit_interval_map_is_ldmlr_normalisation() -> None:
    x = _features(2)
    scaler = UnitIntervalMap.fit(x)
    torch.testing.assert_close(scaler.encode(x), x * 2 - 1)
    torch.testing.assert_close(scaler.decode(scaler.encode(x)), x)
    # LDMLR clamps x̂0 to [-1, 1]: decoded, that is [0, 1], cutting off every feature above 1.
    clamped = scaler.decode(scaler.encode(x).clamp(-1, 1))
    assert clamped.max() == 1.0 and (x > 1).any()
    assert scaler.state_dict() == {}
    assert isinstance(UnitIntervalMap.from_state_dict({}), UnitIntervalMap)
    with pytest.raises(ValueError):
        UnitIntervalMap.from_state_dict({"mean": torch.zeros(2)})
