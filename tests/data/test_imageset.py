import numpy as np
import pytest
import torch

from featdiff.data.imageset import ImageSet


def make_set(labels: list[int], num_classes: int = 4) -> ImageSet:
    count = len(labels)
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 2, 2).clone()
    return ImageSet(
        images=images,
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=tuple(f"c{i}" for i in range(num_classes)),
        names=tuple(f"img{i}" for i in range(count)),
    )


def test_class_counts_include_absent_classes():
    labels = [0, 2, 2, 0, 2]
    counts = make_set(labels, num_classes=4).class_counts()
    assert counts.dtype == torch.int64
    assert counts.tolist() == [labels.count(c) for c in range(4)]


def test_subset_keeps_images_labels_and_names_aligned_in_index_order():
    full = make_set([0, 1, 2, 3, 0, 1])
    index = torch.tensor([4, 0, 3])
    part = full.subset(index)
    assert part.images[:, 0, 0, 0].tolist() == [4, 0, 3]
    assert part.labels.tolist() == [0, 0, 3]
    assert part.names == ("img4", "img0", "img3")
    assert part.classes == full.classes


def test_subset_by_mask_matches_subset_by_index():
    full = make_set([0, 1, 2, 3, 0, 1])
    mask = full.labels == 1
    by_mask, by_index = full.subset(mask), full.subset(torch.nonzero(mask).flatten())
    assert torch.equal(by_mask.images, by_index.images)
    assert by_mask.names == by_index.names == ("img1", "img5")


def test_empty_subset_and_unnamed_sets_work():
    unnamed = ImageSet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ("a",))
    assert unnamed.subset(torch.tensor([2])).names is None
    empty = make_set([0, 1]).subset(torch.tensor([], dtype=torch.int64))
    assert len(empty) == 0 and empty.names == ()
    assert empty.class_counts().tolist() == [0, 0, 0, 0]


def test_to_moves_tensors_and_keeps_metadata():
    full = make_set([0, 1])
    moved = full.to("cpu")
    assert moved.images.device.type == "cpu"
    assert moved.names == full.names and moved.classes == full.classes
    assert moved.num_classes == 4


@pytest.mark.parametrize(
    "images, labels",
    [
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64)),  # float images
        (torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)),  # no channel axis
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)),  # length mismatch
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32)),  # wrong label dtype
    ],
)
def test_malformed_sets_are_rejected_at_construction(images, labels):
    with pytest.raises(ValueError):
        ImageSet(images, labels, ("a",))


def test_names_must_match_the_image_count():
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ("a",), names=("x",))


def test_counts_agree_with_numpy_on_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500)
    imageset = ImageSet(torch.zeros(500, 1, 1, 1, dtype=torch.uint8), torch.from_numpy(labels), tuple("abcdefgh"))
    assert imageset.class_counts().tolist() == np.bincount(labels, minlength=8).tolist()
