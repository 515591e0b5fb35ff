import json

import pytest
import torch

from featdiff.config import GenerationConfig
from featdiff.generation.pseudo import pseudo_counts

# Totals of LDMLR's generated sets, verified by running its code (reference notes, ldmlr.md §1.3).
LDMLR_PSEUDO_TOTALS = {
    "cifar10_lt_if100_train.npz": 2480,
    "cifar10_lt_if10_train.npz": 4085,
    "cifar100_lt_if100_train.npz": 2262,
    "cifar100_lt_if10_train.npz": 3912,
}


@pytest.mark.parametrize("name, total", LDMLR_PSEUDO_TOTALS.items())
def test_ldmlr_count_rule_matches_ldmlr_totals(data_root, name, total):
    counts = torch.tensor(json.loads((data_root / "MANIFEST.json").read_text())[name]["per_class"])
    assert int(pseudo_counts(counts, GenerationConfig(count_rule="ldmlr")).sum()) == total


def test_round_half_to_even_and_floor():
    counts = pseudo_counts(torch.tensor([5000, 12, 13, 1]), GenerationConfig(count_rule="ldmlr", ratio=0.5, floor=2))
    assert counts.tolist() == [2500, 6, 6, 2]  # 6.5 rounds to 6 like Python's round


def test_balanced_rule_fills_up_to_the_head(data_root):
    counts = torch.tensor(json.loads((data_root / "MANIFEST.json").read_text())["cifar10_lt_if100_train.npz"]["per_class"])
    filled = counts + pseudo_counts(counts, GenerationConfig(count_rule="balanced"))
    assert filled.tolist() == [5000] * 10
    assert int(pseudo_counts(counts, GenerationConfig(count_rule="balanced")).sum()) == 50000 - 12406
