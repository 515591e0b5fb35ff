"""Federated averaging against hand-computed values, and class rows averaged over their holders."""

import pytest
import torch

from featdiff.federated.aggregation import class_row_average, weighted_average


def test_weighted_average_matches_the_closed_form():
    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 8.0]), "steps": torch.tensor(5)}
    out = weighted_average([a, b], [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([(1 + 12) / 4, (2 + 24) / 4]))
    assert out["steps"].item() == 3
    with pytest.raises(ValueError, match="one weight per state"):
        weighted_average([a, b], [1])


def test_class_rows_average_only_their_holders():
    """Client 0 holds class 0 only; client 1 holds both. Row 0 averages both by their counts of
    class 0, row 1 is client 1's alone; the null row (2) follows client size."""
    broadcast = torch.zeros(3, 2)
    first, second = broadcast.clone(), broadcast.clone()
    first[0], first[2] = 1.0, 1.0
    second[0], second[1], second[2] = 3.0, 5.0, 3.0
    counts = torch.tensor([[30, 0], [10, 20]])
    sizes = [30, 30]
    out = class_row_average([{"class_emb.weight": first}, {"class_emb.weight": second}], sizes, counts)
    table = out["class_emb.weight"]
    torch.testing.assert_close(table[0], torch.full((2,), (30 * 1.0 + 10 * 3.0) / 40))
    torch.testing.assert_close(table[1], torch.full((2,), 5.0))
    torch.testing.assert_close(table[2], torch.full((2,), 2.0))
    plain = weighted_average([{"class_emb.weight": first}, {"class_emb.weight": second}], sizes)["class_emb.weight"]
    assert table[1].norm() > plain[1].norm()  # plain FedAvg halves the tail row


def test_a_class_nobody_holds_keeps_the_size_weighting():
    rows = [torch.randn(4, 3, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    counts = torch.tensor([[5, 0, 1], [2, 0, 7]])
    out = class_row_average([{"class_emb.weight": r} for r in rows], [6, 9], counts)["class_emb.weight"]
    torch.testing.assert_close(out[1], (6 * rows[0][1] + 9 * rows[1][1]) / 15)
