import os
import pickle

import numpy as np
import pytest

from featdiff.data.official import load_official
from featdiff.errors import UserError


@pytest.mark.parametrize("dataset, train_per_file", [("cifar10", 12), ("cifar100", 40)])
@pytest.mark.parametrize("old_numpy_spelling", [True, False])
def test_round_trip_of_the_official_layout(tmp_path, fake_official, dataset, train_per_file, old_numpy_spelling):
    written = fake_official(tmp_path, dataset, train_per_file, test_count=15, old_numpy_spelling=old_numpy_spelling)
    train, test = load_official(dataset, tmp_path)
    assert np.array_equal(train.images.numpy(), written.train_images)
    assert train.labels.tolist() == written.train_labels.tolist()
    assert list(train.names) == written.train_names
    assert np.array_equal(test.images.numpy(), written.test_images)
    assert test.labels.tolist() == written.test_labels.tolist()
    assert list(test.names) == written.test_names
    assert list(train.classes) == list(test.classes) == written.classes


def test_the_extracted_folder_itself_is_accepted(tmp_path, fake_official):
    written = fake_official(tmp_path, "cifar10", 3, test_count=4)
    train, _ = load_official("cifar10", written.folder)
    assert list(train.names) == written.train_names


def test_rows_are_read_as_channel_planes(tmp_path, fake_official):
    """CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, each row-major."""
    written = fake_official(tmp_path, "cifar100", 2, test_count=1)
    raw = pickle.loads((written.folder / "train").read_bytes(), encoding="bytes")[b"data"]
    train, _ = load_official("cifar100", tmp_path)
    row = raw[1]
    assert train.images[1, 0, 0, 5].item() == row[5]
    assert train.images[1, 1, 2, 3].item() == row[1024 + 2 * 32 + 3]
    assert train.images[1, 2, 31, 31].item() == row[3071]


def test_missing_files_suggest_the_download_command(tmp_path, fake_official):
    written = fake_official(tmp_path, "cifar10", 2, test_count=2)
    (written.folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="featdiff data download") as caught:
        load_official("cifar10", tmp_path)
    assert "data_batch_3" in str(caught.value) and "\n" not in str(caught.value)


def test_empty_folder_suggests_the_download_command(tmp_path):
    with pytest.raises(UserError, match="featdiff data download"):
        load_official("cifar100", tmp_path)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, fake_official):
    written = fake_official(tmp_path, "cifar100", 2, test_count=2)
    marker = tmp_path / "was_executed"
    (written.folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": RunsCode(marker)}, protocol=2))
    with pytest.raises(UserError, match="not allowed"):
        load_official("cifar100", tmp_path)
    assert not marker.exists()


def test_a_file_without_the_expected_fields_is_reported(tmp_path, fake_official):
    written = fake_official(tmp_path, "cifar10", 2, test_count=2)
    (written.folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(UserError, match="labels"):
        load_official("cifar10", tmp_path)


def test_unknown_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cifar10"):
        load_official("mnist", tmp_path)
