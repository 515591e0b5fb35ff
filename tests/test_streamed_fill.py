"""A fill too large for memory: pseudo-features streamed to a safetensors file chunk by chunk, and a
head trained on the memory-mapped file batch by batch, to the same weights as from memory."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import featdiff
from featdiff.errors import UserError
from featdiff.io import StreamedTensorFile, mapped_tensors
from featdiff.training.classifier import SelectedRows, StackedRows


def shapes(rows: int, dim: int) -> dict:
    return {"features": ((rows, dim), torch.float32), "labels": ((rows,), torch.int64)}


def test_a_streamed_file_reads_back_as_written_with_safetensors_and_mapped(tmp_path):
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(1000, 7, generator=g), torch.randint(0, 9, (1000,), generator=g)
    path = tmp_path / "fill.safetensors"
    with StreamedTensorFile(path, shapes(1000, 7), metadata={"note": "blocks"}) as out:
        for start, stop in [(0, 1), (1, 333), (333, 334), (334, 1000)]:  # uneven blocks, the two tensors interleaved
            out.append("features", features[start:stop])
            out.append("labels", labels[start:stop])
    read = load_file(path)  # safetensors' own reader: an independent check of the format
    assert torch.equal(read["features"], features) and torch.equal(read["labels"], labels)
    mapped = mapped_tensors(path, fix="-")
    assert torch.equal(mapped["features"], features) and torch.equal(mapped["labels"], labels)
    mapped["features"][0] = 99.0  # copy-on-write: the file is unchanged
    assert torch.equal(load_file(path)["features"], features)


def test_an_interrupted_or_short_write_leaves_no_file(tmp_path):
    path = tmp_path / "fill.safetensors"
    with pytest.raises(RuntimeError, match="killed"):
        with StreamedTensorFile(path, shapes(10, 3)) as out:
            out.append("features", torch.zeros(4, 3))
            raise RuntimeError("killed")
    with pytest.raises(ValueError, match="not fully written"):
        with StreamedTensorFile(path, shapes(10, 3)) as out:
            out.append("features", torch.zeros(10, 3))
    with pytest.raises(ValueError, match="more rows"):
        with StreamedTensorFile(path, shapes(10, 3)) as out:
            out.append("features", torch.zeros(11, 3))
    assert list(tmp_path.iterdir()) == []


def anonymous_kib() -> int:
    """This process's resident anonymous memory (Linux), which a mapped file's pages are not."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_a_mapped_file_is_not_read_into_memory(tmp_path):
    rows, dim = 65_536, 1024  # 256 MiB of features
    path = tmp_path / "big.safetensors"
    with StreamedTensorFile(path, shapes(rows, dim)) as out:
        block = torch.ones(4096, dim)
        for _ in range(rows // 4096):
            out.append("features", block)
            out.append("labels", torch.zeros(4096, dtype=torch.int64))
    before = anonymous_kib()
    mapped = mapped_tensors(path, fix="-")
    batch = mapped["features"][torch.randint(0, rows, (1024,))]  # one batch of rows, gathered from the file
    grown_mib = (anonymous_kib() - before) / 1024
    assert batch.shape == (1024, dim) and bool((batch == 1).all())
    assert grown_mib < 64, grown_mib  # the batch is 4 MiB; the file 256 MiB


def blobs(seed: int = 0, counts=(300, 120, 40, 12, 5), dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(counts), dim, generator=g) * 4
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return centres, labels, centres[labels] + torch.randn(len(labels), dim, generator=g)


def test_write_fill_streams_the_real_records_then_a_balanced_fill(tmp_path):
    centres, labels, features = blobs()
    generator = featdiff.fit(features, labels, generator="gaussian")
    path = generator.write_fill(tmp_path / "fill.safetensors", chunk=37)
    x, y = featdiff.open_features(path)
    assert torch.bincount(y).tolist() == [300] * 5  # every class filled up to the largest
    assert torch.equal(x[: len(labels)], features) and torch.equal(y[: len(labels)], labels)
    pseudo, pseudo_labels = x[len(labels) :], y[len(labels) :]
    for c in range(1, 5):  # the Gaussian's draws sit around their class's training mean
        drawn = pseudo[pseudo_labels == c]
        assert (drawn.mean(0) - features[labels == c].mean(0)).norm() < 0.5 * (centres[c] - centres[0]).norm()
    again = generator.write_fill(tmp_path / "again.safetensors", chunk=37)
    assert (tmp_path / "fill.safetensors").read_bytes() == again.read_bytes()  # the same call writes the same file
    only = generator.write_fill(tmp_path / "only.safetensors", torch.tensor([0, 0, 3, 0, 2]), include_real=False)
    assert featdiff.open_features(only)[1].tolist() == [2, 2, 2, 4, 4]


def test_a_head_trains_on_the_mapped_fill_to_the_weights_it_gets_from_memory(tmp_path):
    centres, labels, features = blobs()
    path = featdiff.fit(features, labels, generator="gaussian").write_fill(tmp_path / "fill.safetensors", chunk=100)
    x, y = featdiff.open_features(path)
    recipe = {"classifier": {"epochs": 100}}
    from_file = featdiff.train_head(x, y, config=recipe)
    from_memory = featdiff.train_head(x.clone(), y.clone(), config=recipe)
    assert torch.equal(from_file.weight, from_memory.weight) and torch.equal(from_file.bias, from_memory.bias)
    test_labels = torch.arange(5).repeat_interleave(100)
    test = centres[test_labels] + torch.randn(500, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        accuracy = (from_file(test).argmax(1) == test_labels).float().mean()
    assert accuracy > 0.6  # five blobs; chance is 0.2


def test_bad_fills_and_files_are_one_line_errors(tmp_path):
    _, labels, features = blobs()
    generator = featdiff.fit(features, labels, generator="gaussian")
    with pytest.raises(UserError, match="one per class"):
        generator.write_fill(tmp_path / "f.safetensors", torch.tensor([1, 2]))
    with pytest.raises(UserError, match="at least 1 row"):
        generator.write_fill(tmp_path / "f.safetensors", chunk=0)
    other = tmp_path / "other.safetensors"
    with StreamedTensorFile(other, {"weights": ((3,), torch.float32)}) as out:
        out.append("weights", torch.ones(3))
    with pytest.raises(UserError, match="not the features and labels"):
        featdiff.open_features(other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(np.uint64(10**6).tobytes() + b"{")
    with pytest.raises(UserError, match="cannot read"):
        featdiff.open_features(broken)
    assert sorted(os.listdir(tmp_path)) == ["broken.safetensors", "other.safetensors"]  # the refused fills left nothing


def test_stacked_rows_read_like_the_concatenated_tensor():
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(n, 5, generator=g) for n in (7, 1, 12)]
    whole, stacked = torch.cat(parts), StackedRows(*parts)
    assert stacked.shape == whole.shape and len(stacked) == 20
    index = torch.randint(0, 20, (50,), generator=g)
    assert torch.equal(stacked[index], whole[index]) and torch.equal(stacked[:3], whole[:3]) and torch.equal(stacked[5:9], whole[5:9])
    with pytest.raises(ValueError, match="one D"):
        StackedRows(torch.zeros(3, 5), torch.zeros(3, 4))


def test_moving_a_row_table_moves_its_batches_not_its_parts():
    """A fill larger than the accelerator's memory must train there: `to(device)` leaves every
    part (a mapped fill, the rows a filter kept) in host memory and puts only the gathered batch
    on the device. The meta device stands in for an accelerator: nothing can be read back from it."""
    table, real = torch.randn(30, 4), torch.randn(5, 4)
    selected = SelectedRows(table, torch.tensor([2, 7, 11]))
    moved = StackedRows(real, selected).to(torch.device("meta"))
    batch = moved[torch.tensor([0, 6, 7])]
    assert batch.device.type == "meta" and batch.shape == (3, 4)
    assert all(part.device.type == "cpu" for part in moved.parts) and moved.parts[1].table.data_ptr() == table.data_ptr()
    assert selected.to(torch.device("meta"))[torch.tensor([1])].device.type == "meta"
    assert torch.equal(moved.to(torch.device("cpu"))[torch.tensor([0, 6, 7])], torch.cat([real[:1], table[[7, 11]]]))


def run_digits(folder: Path, capsys, *extra: str) -> Path:
    from featdiff.cli import main

    settings = [
        "encoder.epochs=2",
        "diffusion.steps=50",
        "classifier.epochs=2",
        "generation.count_rule=uniform",
        "generation.per_class=300",
        *extra,
    ]
    status = main(["run", "configs/digits_ldmlr.yaml", *[part for s in settings for part in ("--set", s)], "--out", str(folder)])
    assert status == 0, capsys.readouterr().err
    return folder


def test_a_runs_fill_is_streamed_chunk_by_chunk_to_the_draws_of_one_chunk(tmp_path, monkeypatch, capsys):
    """Ten classes × 300 pseudo-features: in one chunk, and in three of 1,024 rows (the sampler's
    own chunk size), the fill files are the same, bit for bit."""
    import featdiff.methods.stages

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    one = run_digits(tmp_path / "one", capsys)
    monkeypatch.setattr(featdiff.methods.stages, "FILL_CHUNK", 1024)
    chunked = run_digits(tmp_path / "chunked", capsys)
    for name in ("pseudo_features.safetensors", "gaussian_generation.safetensors"):
        a, b = load_file(one / name), load_file(chunked / name)
        assert len(a["labels"]) == 3000 and torch.equal(a["labels"], b["labels"]) and torch.equal(a["features"], b["features"]), name


def test_a_chunked_fill_fits_the_transfer_once_and_applies_it_to_every_chunk(tmp_path, monkeypatch):
    """The transfer depends only on the real features: a fill of many chunks fits it once, and it acts
    on every chunk (the rarest class's rows come last, in later chunks than the first)."""
    from featdiff.generation.transfer import HeadToTail

    fits = []
    original = HeadToTail.fitted.__func__
    monkeypatch.setattr(HeadToTail, "fitted", classmethod(lambda cls, *a, **k: fits.append(1) or original(cls, *a, **k)))
    _, labels, features = blobs()
    config = {"generation": {"transfer": "residual", "transfer_strength": 0.8}}
    chunked = featdiff.fit(features, labels, generator="gaussian", config=config).write_fill(tmp_path / "chunked.safetensors", chunk=37)
    assert len(fits) == 1
    x, y = featdiff.open_features(chunked)
    plain, _ = featdiff.open_features(
        featdiff.fit(features, labels, generator="gaussian").write_fill(tmp_path / "plain.safetensors", chunk=37)
    )
    rarest = y == 4
    assert torch.equal(x[y == 0], plain[y == 0])  # the head class is not transferred (β = 0) ...
    assert (x[rarest] - plain[rarest]).abs().max() > 0.1  # ... the rarest class is, in its late chunks


class ReadRows:
    """A table that records the largest block of rows read from it at once."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table, self.dtype, self.largest = table, table.dtype, 0

    def __getitem__(self, rows: slice) -> torch.Tensor:
        block = self.table[rows]
        self.largest = max(self.largest, len(block))
        return block


def test_the_filter_reads_a_fill_chunk_by_chunk_and_keeps_its_rows_without_copying_them(tmp_path):
    """Bands computed `chunk` rows at a time match each row's distance to its prototype in radii
    (worked out here with numpy), and the kept rows of a mapped fill are read batch by batch from
    the file's own memory, never gathered into a copy."""
    from featdiff.config import PseudoFilterConfig
    from featdiff.generation.filter import band_weights
    from featdiff.statistics import ClassGeometry

    rows, dim = 10_000, 64
    path = tmp_path / "fill.safetensors"
    g = torch.Generator().manual_seed(0)
    with StreamedTensorFile(path, shapes(rows, dim)) as out:
        for _ in range(rows // 1000):
            out.append("features", torch.randn(1000, dim, generator=g) * torch.rand(1000, 1, generator=g) * 3)
            out.append("labels", torch.randint(0, 2, (1000,), generator=g))
    mapped = mapped_tensors(path, fix="-")
    geometry = ClassGeometry(prototypes=torch.zeros(2, dim), radii=torch.tensor([8.0, 12.0]))
    config = PseudoFilterConfig(enabled=True, id_edge=1.0, aid_edge=1.5, ood_weight=0.0, aid_weight=0.5)
    probe = ReadRows(mapped["features"])
    weights, band = band_weights(probe, mapped["labels"], geometry, config, chunk=768)
    assert probe.largest == 768

    features = mapped["features"].numpy().astype(np.float64)
    ratios = np.linalg.norm(features, axis=1) / np.array([8.0, 12.0])[mapped["labels"].numpy()]
    expected = (ratios > 1.0).astype(int) + (ratios > 1.5).astype(int)
    assert band.tolist() == expected.tolist() and min((expected == b).sum() for b in range(3)) > 500
    assert weights.tolist() == [{0: 1.0, 1: 0.5, 2: 0.0}[b] for b in expected.tolist()]

    kept = torch.nonzero(weights > 0).flatten()
    selected = SelectedRows(mapped["features"], kept)
    assert selected.table.data_ptr() == mapped["features"].data_ptr() and selected.shape == (int((expected < 2).sum()), dim)
    batch = torch.randint(0, len(kept), (256,), generator=g)
    assert torch.equal(selected[batch], mapped["features"][kept[batch]]) and torch.equal(selected[:3], mapped["features"][kept[:3]])
    stacked = StackedRows(torch.zeros(3, dim), selected)
    assert torch.equal(stacked[torch.tensor([1, 3, 4])][1:], mapped["features"][kept[:2]])


def test_a_run_whose_filter_drops_pseudo_features_trains_on_the_rest(tmp_path, monkeypatch, capsys):
    """Tight edges put many pseudo-features out of distribution (weight 0): the head trains on the
    kept rows of the mapped fill (`SelectedRows`) and still learns the classes."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    edges = ("filter.enabled=true", "filter.radius=rms", "filter.id_edge=3", "filter.aid_edge=3.5")
    folder = run_digits(tmp_path / "filtered", capsys, *edges)
    results = json.loads((folder / "results.json").read_text())
    bands = results["filter_bands"]
    assert bands["ood"] > 0.05 and bands["id"] + bands["aid"] > 0.05, bands  # some rows dropped, some kept
    assert results["acc"]["overall"] > 20  # ten digit classes: a head trained on what was kept, well above chance
