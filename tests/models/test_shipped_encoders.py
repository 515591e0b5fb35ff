"""LDMLR's four shipped ResNet-32 encoders reproduce their published accuracies.

Expected values are not ours: top-1 is from the data README (published with the encoders), the
label-shift (logit-adjusted) and many/medium/few numbers from ldmlr.md §3.2, which verified them
with an independent re-implementation. Both agree with LDMLR's own README table to 0.03.
"""

import json

import pytest
import torch

from featdiff.data.packed import load_packed
from featdiff.evaluation.inference import encode
from featdiff.evaluation.metrics import summarize
from featdiff.models.encoders import load_encoder

MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
TOLERANCE = 0.05

# dataset, imbalance factor, top-1 (README), top-1 after label shift (§3.2),
# many/medium/few plain and adjusted (§3.2, only published for IF=100).
CASES = [
    ("cifar10", 100, 72.49, 80.86, {"many": 80.40, "medium": 40.85}, {"many": 82.62, "medium": 73.80}),
    ("cifar10", 10, 88.22, 89.48, {}, {}),
    ("cifar100", 100, 41.28, 48.59, {"many": 71.37, "medium": 40.23, "few": 7.40}, {"many": 64.49, "medium": 50.77, "few": 27.50}),
    ("cifar100", 10, 58.69, 61.80, {}, {}),
]


@pytest.fixture(scope="module")
def test_sets(data_root):
    return {name: load_packed(data_root / f"{name}_test.npz") for name in ("cifar10", "cifar100")}


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "imbalance", "top1", "top1_adjusted", "groups", "groups_adjusted"), CASES)
def test_shipped_encoder_reproduces_published_accuracy(
    data_root, test_sets, dataset, imbalance, top1, top1_adjusted, groups, groups_adjusted
):
    split = f"{dataset}_lt_if{imbalance}_train.npz"
    train_counts = torch.tensor(json.loads((data_root / "MANIFEST.json").read_text())[split]["per_class"])
    test = test_sets[dataset]
    model = load_encoder(data_root / f"ldmlr_resnet32_{dataset}_lt_if{imbalance}.safetensors", len(train_counts))

    # The `ce` control's path: eval-mode features, then the encoder's classifier. Batches of 250
    # ran about 2x faster than 1000 on our 2-core CPU; eval-mode features do not depend on batching.
    with torch.no_grad():
        logits = model.fc(encode(model, test.images, MEAN, STD, batch_size=250, device="cpu"))
    summary = summarize(logits, test.labels, train_counts)

    assert summary["acc"]["overall"] == pytest.approx(top1, abs=TOLERANCE)
    assert summary["acc_adjusted"]["overall"] == pytest.approx(top1_adjusted, abs=TOLERANCE)
    for name, value in groups.items():
        assert summary["acc"][name] == pytest.approx(value, abs=TOLERANCE)
    for name, value in groups_adjusted.items():
        assert summary["acc_adjusted"][name] == pytest.approx(value, abs=TOLERANCE)
