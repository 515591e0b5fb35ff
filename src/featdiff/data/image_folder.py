"""Bring your own images: a folder of class folders, or ImageNet-LT's `path label` list files.

`data.source: folder` reads `data.root` in one of two layouts:
- `train/<class>/<image>` and `test/<class>/<image>` (a class is a folder; classes sorted by name,
  the test classes a subset of the training ones);
- `data.train_list` and `data.test_list`: text files of `relative/path label` lines (ImageNet-LT's
  `ImageNet_LT_train.txt`), paths relative to `data.root`, labels 0..C−1.
Every image is decoded with Pillow as RGB, its shorter side resized to `data.image_size` and
centre-cropped to a square, and kept as uint8 like the CIFAR data. The decoded arrays are cached
(`~/.cache/featdiff/decoded`, or `$FEATDIFF_CACHE`), keyed by every file's path, size and
modification time and the image size, so a second run starts at once and a changed file is
decoded again. A missing folder, an empty class, an unreadable image or a bad list line is one
line naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from featdiff.data.imageset import ImageSet
from featdiff.data.packed import read_cached_arrays, write_cached_arrays
from featdiff.errors import UserError
from featdiff.paths import cache_dir
from featdiff.progress import progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _listed(root: Path, list_file: Path) -> list[tuple[Path, int]]:
    if not list_file.is_file():
        raise UserError(f"data list file not found: {list_file}; give `relative/path label` lines (as ImageNet-LT's lists)")
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{list_file} line {number} is {line!r}; every line must be `relative/path label` with an integer label")
        entries.append((root / parts[0], int(parts[1])))
    if not entries:
        raise UserError(f"{list_file} lists no image")
    return entries


def _foldered(split: Path, classes: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    if not split.is_dir():
        raise UserError(f"image folder not found: {split}; data.root must hold train/<class>/… and test/<class>/… (or set data.train_list)")
    found = sorted(p.name for p in split.iterdir() if p.is_dir())
    classes = found if classes is None else classes
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(
            f"{split} has class folders the training set does not: {', '.join(unknown[:5])}; every test class needs training images"
        )
    entries = []
    for label, name in enumerate(classes):
        folder = split / name
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not images and split.name == "train":
            raise UserError(f"class folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}); every class needs training images")
        entries += [(path, label) for path in images]
    if not entries:
        raise UserError(f"{split} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return entries, classes


def _decode(path: Path, size: int) -> np.ndarray:
    """RGB, shorter side resized to `size`, centre-cropped to size × size; (3, size, size) uint8."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image not found: {path}; fix the list file or the folder") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot decode image {path} ({type(error).__name__}): remove or replace it") from None
    width, height = rgb.size
    scale = size / min(width, height)
    resized = rgb.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BILINEAR)
    left, top = (resized.size[0] - size) // 2, (resized.size[1] - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def _key(entries: list[tuple[Path, int]], size: int) -> str:
    digest = hashlib.sha256(f"image-folder|{size}".encode())
    for path, label in entries:
        stat = path.stat() if path.is_file() else None
        digest.update(f"{path}|{label}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()


def _image_set(entries: list[tuple[Path, int]], classes: tuple[str, ...], size: int, desc: str, cache: Path | None) -> ImageSet:
    folder = (cache or cache_dir()) / "decoded" / f"folder-{_key(entries, size)}"
    arrays = read_cached_arrays(folder)
    if arrays is None:
        images = np.empty((len(entries), 3, size, size), dtype=np.uint8)
        for i, (path, _) in enumerate(progress(entries, desc=desc, unit="img", disable=None)):
            images[i] = _decode(path, size)
        arrays = {
            "images": images,
            "labels": np.array([label for _, label in entries], dtype=np.int64),
            "names": np.array([str(path) for path, _ in entries]),
            "classes": np.array(classes),
        }
        write_cached_arrays(folder, arrays)
    return ImageSet(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), classes, tuple(arrays["names"].tolist()))


def load_image_folder(
    root: Path, image_size: int, *, train_list: str = "", test_list: str = "", cache: Path | None = None
) -> tuple[ImageSet, ImageSet]:
    """(train, test) of a folder dataset in either layout (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data.root {root} is not a folder; point it at your images (train/<class>/… and test/<class>/…)")
    if train_list or test_list:
        if not (train_list and test_list):
            raise UserError("data.train_list and data.test_list go together: give both list files, or neither for class folders")
        train_entries, test_entries = _listed(root, root / train_list), _listed(root, root / test_list)
        num_classes = max(label for _, label in train_entries + test_entries) + 1
        counts = np.bincount([label for _, label in train_entries], minlength=num_classes)
        if min(label for _, label in train_entries + test_entries) < 0 or (counts == 0).any():
            empty = np.flatnonzero(counts == 0)[:5].tolist()
            raise UserError(f"{root / train_list}: labels must be 0..C-1 with every class in training; no training image of class {empty}")
        classes = tuple(str(c) for c in range(num_classes))
    else:
        train_entries, names = _foldered(root / "train", None)
        test_entries, _ = _foldered(root / "test", names)
        classes = tuple(names)
    train = _image_set(train_entries, classes, image_size, f"decoding {root.name} train", cache)
    test = _image_set(test_entries, classes, image_size, f"decoding {root.name} test", cache)
    return train, test
