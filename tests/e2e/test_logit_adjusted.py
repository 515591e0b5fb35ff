"""`finetune.loss: logit_adjusted`: fine-tuning and joint training offset G's logits by the log
prior G trains under."""

import math

import pytest
import torch

from featdiff.config import EndToEndConfig, FinetuneConfig, RunConfig
from featdiff.methods.e2e.method import settings_for
from featdiff.methods.e2e.model import pseudo_label_distribution, resolve_generation_weight, trained_prior
from featdiff.training.encoder import cross_entropy_loss
from featdiff.training.finetune import logit_offsets


def test_finetune_offsets_are_the_log_prior_of_the_labels_and_absent_for_ce():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2])
    assert logit_offsets(labels, FinetuneConfig()) is None
    offsets = logit_offsets(labels, FinetuneConfig(loss="logit_adjusted"))
    assert offsets.tolist() == pytest.approx([math.log(0.6), math.log(0.3), math.log(0.1)])


def test_the_offset_loss_is_cross_entropy_of_shifted_logits():
    model = torch.nn.Linear(3, 3)
    x, y, offsets = torch.randn(8, 3), torch.randint(0, 3, (8,)), torch.tensor([0.5, -1.0, 2.0])
    expected = torch.nn.functional.cross_entropy(model(x) + offsets, y)
    assert float(cross_entropy_loss(model, x, y, offsets).detach()) == pytest.approx(float(expected.detach()))


def test_joint_training_offsets_by_the_prior_of_real_plus_pseudo_labels():
    counts = torch.tensor([500, 50, 5])
    config = RunConfig(finetune=FinetuneConfig(loss="logit_adjusted"), e2e=EndToEndConfig(gamma_ge=0.2))
    e2e = resolve_generation_weight(config.e2e, counts)
    settings = settings_for(config, e2e, counts)
    prior = trained_prior(e2e, counts, pseudo_label_distribution(counts, e2e.ge_labels))
    assert torch.allclose(settings.logit_offsets.double(), torch.log(prior), atol=1e-6)
    assert settings_for(RunConfig(), e2e, counts).logit_offsets is None
