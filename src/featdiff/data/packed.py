"""LDMLR's packed CIFAR-LT splits: verified against a shipped manifest, decoded once, then cached.

The `.npz` files hold lossless WebP bytes, so every run would otherwise spend tens of seconds
in Pillow. The cache is keyed by the file's sha256, which we compute anyway to prove the file is
the one LDMLR published: a changed file can never be served stale arrays.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featdiff.data.imageset import ImageSet
from featdiff.errors import UserError
from featdiff.io import describe_error
from featdiff.paths import cache_dir
from featdiff.progress import progress

_CACHED_ARRAYS = ("images", "labels", "names", "classes")
_HASH_CHUNK_BYTES = 1 << 20


@functools.cache
def packed_manifest() -> dict[str, dict]:
    """The facts of the six published files (bytes, sha256, images, per_class), copied from their MANIFEST.json."""
    return json.loads(resources.files("featdiff.data").joinpath("manifest.json").read_text())


def sha256_of(path: Path) -> str:
    """Streamed so that hashing a large file costs no memory."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def decode_webp(webp: np.ndarray, offsets: np.ndarray, desc: str = "decoding") -> np.ndarray:
    """All images as uint8 (N, C, H, W); a plain loop is fine because the cache makes it run once per file."""
    first = _decode_one(webp[offsets[0] : offsets[1]])
    out = np.empty((len(offsets) - 1, *first.shape), dtype=np.uint8)
    out[0] = first
    for i in progress(range(1, len(out)), desc=desc, unit="img", initial=1, total=len(out), disable=None):
        out[i] = _decode_one(webp[offsets[i] : offsets[i + 1]])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _decode_one(encoded: np.ndarray) -> np.ndarray:
    with Image.open(io.BytesIO(encoded.tobytes())) as image:
        return np.asarray(image.convert("RGB"))


def load_packed(path: Path, cache: Path | None = None) -> ImageSet:
    """One packed split as an ImageSet; raises UserError for a missing, unknown or altered file."""
    path = Path(path)
    expected = _expected_sha256(path)
    actual = sha256_of(path)
    if actual != expected:
        raise UserError(
            f"{path} does not match LDMLR's published file (sha256 {actual}, expected {expected}): re-copy it from the shared data folder"
        )
    folder = (cache or cache_dir()) / "decoded" / actual
    arrays = read_cached_arrays(folder)
    if arrays is None:
        write_cached_arrays(folder, _decode_file(path))
        arrays = read_cached_arrays(folder)
    if arrays is None:
        raise UserError(
            f"the decoded cache {folder} cannot be read back after writing it: check that disk, or set FEATDIFF_CACHE to another folder"
        )
    return ImageSet(
        images=torch.from_numpy(arrays["images"]),
        labels=torch.from_numpy(arrays["labels"]),
        classes=tuple(arrays["classes"].tolist()),
        names=tuple(arrays["names"].tolist()),
    )


def _expected_sha256(path: Path) -> str:
    if not path.parent.is_dir():
        raise UserError(
            f"data folder not found: {path.parent}: pass --set data.root=DIR with the folder holding "
            "LDMLR's packed CIFAR-LT files (see README, 'Data')"
        )
    if not path.is_file():
        raise UserError(
            f"data file not found: {path}: pass --set data.root=DIR with the folder holding "
            "LDMLR's packed CIFAR-LT files (see README, 'Data')"
        )
    manifest = packed_manifest()
    if path.name not in manifest:
        raise UserError(f"{path.name} is not one of LDMLR's packed files: use one of {', '.join(sorted(manifest))}")
    return manifest[path.name]["sha256"]


def _decode_file(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as packed:
        return {
            "images": decode_webp(packed["webp"], packed["offsets"], desc=f"decoding {path.name}"),
            "labels": packed["labels"].astype(np.int64),
            "names": packed["names"],
            "classes": packed["classes"],
        }


def write_cached_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write into a sibling temp dir, then rename: readers see the whole cache or none of it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp's private 0700 would hide the cache from other users of a shared cache dir
    try:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array, allow_pickle=False)
        if folder.exists() and not _is_complete(folder):
            shutil.rmtree(folder)  # files deleted by hand: rebuild rather than serve a partial cache
        os.replace(staging, folder)
    except OSError:
        if not _is_complete(folder):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_cached_arrays(folder: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there are none; a damaged cache (a truncated or garbled
    `.npy`, arrays that disagree) is deleted so that it gets decoded again."""
    if not _is_complete(folder):
        return None
    try:
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in _CACHED_ARRAYS}
    except (ValueError, EOFError, OSError) as error:  # what np.load raises for a short or garbled file
        problem = describe_error(error)
    else:
        images, labels = arrays["images"], arrays["labels"]
        if images.ndim == 4 and images.dtype == np.uint8 and labels.ndim == 1 and len(images) == len(labels):
            return arrays
        problem = f"images {images.shape} {images.dtype} do not fit labels {labels.shape}"
    print(f"featdiff: decoded cache {folder} is damaged ({problem}); decoding the file again", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _is_complete(folder: Path) -> bool:
    return all((folder / f"{name}.npy").is_file() for name in _CACHED_ARRAYS)
