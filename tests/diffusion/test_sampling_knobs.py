"""The sampling knobs do what they say: temperature widens, guidance mixes in the unconditional
model, the clip box widens, label dropout trains the null class. Checked with an exact denoiser
for Gaussian data, so every expected number comes from the Gaussian's formulas, not the sampler."""

import pytest
import torch

from featdiff.config import DiffusionConfig
from featdiff.diffusion.sampling import SamplerSettings, sample_features, widened
from featdiff.diffusion.schedules import make_schedule
from featdiff.models.denoiser import FeatureDenoiser
from featdiff.seeding import initialise
from featdiff.training.denoiser import denoiser_state, dropped_labels, train_denoiser

SCHEDULE = make_schedule("cosine", 1000)
MEANS = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
NULL_MEAN = torch.zeros(2, dtype=torch.float64)
STD = 0.5


class IsotropicOracle:
    """E[ε | x_t] for x0 | y ~ N(μ_y, STD²·I), and for the null class (label 2) x0 ~ N(0, STD²·I):
    s·(x_t − a·μ)/(a²·STD² + s²) with a = √ᾱ_t, s = √(1 − ᾱ_t)."""

    null_class = 2

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ac = SCHEDULE.alphas_cumprod[t].double()
        a, s = ac.sqrt()[:, None], (1 - ac).sqrt()[:, None]
        mu = torch.cat([MEANS, NULL_MEAN[None]])[y]
        return (s * (x_t.double() - a * mu) / (a**2 * STD**2 + s**2)).to(x_t.dtype)


DEFAULT_SAMPLER = SamplerSettings()


def _samples(labels, sampler=DEFAULT_SAMPLER, temperature=None, clip=None, seed=0):
    return sample_features(
        IsotropicOracle(),
        labels,
        feature_dim=2,
        schedule=SCHEDULE,
        sampler=sampler,
        clip=clip,
        generator=torch.Generator().manual_seed(seed),
        progress=False,
        temperature=temperature,
    ).double()


LABELS = torch.tensor([0, 1]).repeat_interleave(2000)


def test_unit_temperature_is_no_temperature():
    assert torch.equal(_samples(LABELS), _samples(LABELS, temperature=torch.ones(len(LABELS))))


def test_temperature_widens_each_class_by_its_own_factor():
    temperature = torch.where(LABELS == 1, 2.0, 1.0)
    plain, hot = _samples(LABELS), _samples(LABELS, temperature=temperature)
    for c, factor in ((0, 1.0), (1, 2.0)):
        ratio = hot[LABELS == c].std(0) / plain[LABELS == c].std(0)
        # Stochastic DDIM's output std is close to STD·factor (the noise enters linearly at every step).
        assert ((ratio - factor).abs() < 0.15 * factor).all(), (c, ratio)
        assert ((hot[LABELS == c].mean(0) - MEANS[c]).abs() < 0.1).all()


@pytest.mark.parametrize("guidance", [0.0, 0.5, 1.0])
def test_guidance_moves_each_class_towards_the_unconditional_model(guidance):
    """Guidance w on an exact model of N(μ_y, s²I) and N(0, s²I) lands at w·μ_y (the guided score
    of two equal-width Gaussians is that of one centred at (1 − w)·0 + w·μ_y)."""
    samples = _samples(LABELS, SamplerSettings(guidance=guidance))
    for c in (0, 1):
        mean = samples[LABELS == c].mean(0)
        assert torch.allclose(mean, guidance * MEANS[c], atol=0.1), (guidance, c, mean)


def test_a_widened_clip_box_lets_samples_leave_the_training_range():
    box = (torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]))
    tight = _samples(LABELS, clip=box)
    wide = _samples(LABELS, SamplerSettings(clip_widen=3.0), clip=box)
    assert tight.abs().max() <= 1.0 + 1e-5
    assert wide.abs().max() > 2.0 and wide.abs().max() <= 3.0 + 1e-5


def test_widened_scales_a_box_about_its_centre_and_a_ball_radius():
    low, high = widened((torch.tensor([0.0, -2.0]), torch.tensor([2.0, 0.0])), 2.0)
    assert low.tolist() == [-1.0, -3.0] and high.tolist() == [3.0, 1.0]
    assert widened(4.0, 1.5) == 6.0 and widened(None, 2.0) is None


def test_dropped_labels_hit_the_rate():
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = dropped_labels(labels, 0.25, null_class=7, generator=torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 7}
    assert abs(float((dropped == 7).double().mean()) - 0.25) < 0.02


def _null_row_after_training(label_dropout: float) -> torch.Tensor:
    config = DiffusionConfig(steps=30, batch_size=64, label_dropout=label_dropout)
    model = initialise(FeatureDenoiser(4, 3, width=16, depth=1, time_dim=8), torch.Generator().manual_seed(0))
    before = model.class_emb.weight[model.null_class].detach().clone()
    features, labels = torch.randn(256, 4), torch.randint(0, 3, (256,))
    state = denoiser_state(model, 256, config, torch.Generator().manual_seed(1), draws=torch.Generator().manual_seed(2))
    train_denoiser(state, features, labels, SCHEDULE, config)
    return model.class_emb.weight[model.null_class].detach() - before


def test_label_dropout_trains_the_null_class_and_no_dropout_leaves_it():
    assert torch.equal(_null_row_after_training(0.0), torch.zeros(16))
    assert _null_row_after_training(0.3).abs().max() > 1e-4
