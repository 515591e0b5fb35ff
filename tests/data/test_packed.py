import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featdiff.data import packed
from featdiff.data.packed import load_packed
from featdiff.errors import UserError

PACKED_FILES = (
    "cifar10_lt_if100_train.npz",
    "cifar10_lt_if10_train.npz",
    "cifar10_test.npz",
    "cifar100_lt_if100_train.npz",
    "cifar100_lt_if10_train.npz",
    "cifar100_test.npz",
)
README_IMAGE_COUNTS = {  # the table in the data folder's README
    "cifar10_lt_if100_train.npz": 12_406,
    "cifar10_lt_if10_train.npz": 20_431,
    "cifar10_test.npz": 10_000,
    "cifar100_lt_if100_train.npz": 10_847,
    "cifar100_lt_if10_train.npz": 19_573,
    "cifar100_test.npz": 10_000,
}


@pytest.fixture(scope="module")
def shared_manifest(data_root: Path) -> dict:
    return json.loads((data_root / "MANIFEST.json").read_text())


@pytest.fixture(scope="module")
def loaded(data_root: Path) -> dict:
    """Each file loaded once (decoding on the first test run, from the cache afterwards)."""
    return {name: load_packed(data_root / name) for name in PACKED_FILES}


def pillow_decode(npz: np.lib.npyio.NpzFile, i: int) -> np.ndarray:
    webp, offsets = npz["webp"], npz["offsets"]
    return np.asarray(Image.open(io.BytesIO(webp[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB"))


def test_shipped_manifest_copies_the_published_facts(shared_manifest):
    shipped = packed.packed_manifest()
    assert set(shipped) == set(PACKED_FILES)
    for name in PACKED_FILES:
        for fact in ("bytes", "sha256", "images", "per_class"):
            assert shipped[name][fact] == shared_manifest[name][fact], (name, fact)


@pytest.mark.parametrize("name", PACKED_FILES)
def test_counts_match_the_readme_and_manifest(loaded, shared_manifest, name):
    imageset = loaded[name]
    assert len(imageset) == README_IMAGE_COUNTS[name] == shared_manifest[name]["images"]
    assert imageset.class_counts().tolist() == shared_manifest[name]["per_class"]
    assert imageset.num_classes == shared_manifest[name]["classes"]
    assert imageset.images.shape[1:] == (3, 32, 32) and imageset.images.dtype == torch.uint8


@pytest.mark.parametrize("name", PACKED_FILES)
def test_arrays_equal_a_direct_read_of_the_file(loaded, data_root, name):
    imageset = loaded[name]
    with np.load(data_root / name, allow_pickle=False) as npz:
        assert imageset.labels.numpy().tolist() == npz["labels"].tolist()
        assert imageset.names == tuple(npz["names"].tolist())
        assert imageset.classes == tuple(npz["classes"].tolist())
        rng = np.random.default_rng(len(name))
        for i in [0, len(imageset) - 1, *rng.integers(0, len(imageset), 6)]:
            expected = pillow_decode(npz, int(i))
            assert np.array_equal(imageset.images[i].permute(1, 2, 0).numpy(), expected), (name, i)


def test_second_load_uses_the_cache_without_decoding(loaded, data_root, monkeypatch):
    def decoder_must_not_run(*args, **kwargs):
        raise AssertionError("decoded again although the cache was complete")

    monkeypatch.setattr(packed, "decode_webp", decoder_must_not_run)
    name = "cifar10_lt_if100_train.npz"
    again = load_packed(data_root / name)
    assert torch.equal(again.images, loaded[name].images)
    assert torch.equal(again.labels, loaded[name].labels)


def fake_decoded(webp, offsets, desc=""):
    return np.zeros((len(offsets) - 1, 3, 32, 32), dtype=np.uint8)


def test_an_interrupted_cache_write_leaves_nothing_behind(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(packed, "decode_webp", fake_decoded)
    real_save, calls = np.save, []

    def save_then_die(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_die)
    with pytest.raises(OSError, match="disk full"):
        load_packed(data_root / "cifar10_test.npz", cache=tmp_path)
    assert list((tmp_path / "decoded").iterdir()) == []

    monkeypatch.setattr(np, "save", real_save)
    result = load_packed(data_root / "cifar10_test.npz", cache=tmp_path)
    expected_sha = hashlib.sha256((data_root / "cifar10_test.npz").read_bytes()).hexdigest()
    assert [p.name for p in (tmp_path / "decoded").iterdir()] == [expected_sha]
    assert len(result) == 10_000


def test_altered_file_is_rejected_with_both_hashes(data_root, tmp_path):
    copy = tmp_path / "cifar10_test.npz"
    shutil.copyfile(data_root / copy.name, copy)
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    copy.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    expected = json.loads((data_root / "MANIFEST.json").read_text())[copy.name]["sha256"]
    with pytest.raises(UserError) as caught:
        load_packed(copy, cache=tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message
    assert str(copy) in message and actual in message and expected in message and "re-copy" in message
    assert not (tmp_path / "cache").exists()


def test_missing_folder_names_the_folder_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as caught:
        load_packed(missing / "cifar10_test.npz")
    message = str(caught.value)
    assert "\n" not in message and str(missing) in message and "--set data.root=" in message


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(UserError) as caught:
        load_packed(tmp_path / "cifar10_test.npz")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "cifar10_test.npz") in message and "--set data.root=" in message


def test_unknown_file_name_is_rejected(tmp_path):
    stray = tmp_path / "cifar10_lt_if50_train.npz"
    stray.write_bytes(b"not LDMLR's")
    with pytest.raises(UserError, match="cifar10_lt_if50_train.npz") as caught:
        load_packed(stray)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("damaged", "keep"), [("images.npy", 0.5), ("labels.npy", 0.5), ("classes.npy", 0.0), ("names.npy", 0.1)])
def test_a_truncated_decoded_cache_is_rebuilt(data_root, tmp_path, monkeypatch, capsys, damaged, keep):
    decodes = []

    def counted_fake(webp, offsets, desc=""):
        decodes.append(desc)
        return fake_decoded(webp, offsets, desc)

    monkeypatch.setattr(packed, "decode_webp", counted_fake)
    first = load_packed(data_root / "cifar10_test.npz", cache=tmp_path)
    (folder,) = (tmp_path / "decoded").iterdir()
    path = folder / damaged
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    capsys.readouterr()

    again = load_packed(data_root / "cifar10_test.npz", cache=tmp_path)
    assert len(decodes) == 2, "the damaged cache was served instead of being rebuilt"
    assert f"decoded cache {folder} is damaged" in capsys.readouterr().err
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.names == first.names and again.classes == first.classes
    assert [p.name for p in (tmp_path / "decoded").iterdir()] == [folder.name]
    assert load_packed(data_root / "cifar10_test.npz", cache=tmp_path).labels.shape == (10_000,)
    assert len(decodes) == 2  # the rebuilt cache is served
