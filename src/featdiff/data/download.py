"""Fetch the official CIFAR archives, checked by md5 and extracted without trusting their paths.

A failure leaves nothing in DEST: the archive streams to a temp file that is removed on any
error, and extraction goes to a temp folder renamed into place only once complete, so a
half-finished run never looks like a finished one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from featdiff.data.official import OFFICIAL_LAYOUTS, Dataset
from featdiff.errors import UserError
from featdiff.progress import progress

OFFICIAL_ARCHIVES: dict[str, tuple[str, str]] = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
_TIMEOUT_S = 30
_CHUNK_BYTES = 1 << 20


def download_cifar(dataset: Dataset, dest: Path, url: str | None = None, md5: str | None = None) -> Path:
    """The extracted official folder under `dest`, downloading only if it is not complete already."""
    if dataset not in OFFICIAL_ARCHIVES:
        raise UserError(f"unknown dataset {dataset!r}: use one of {', '.join(OFFICIAL_ARCHIVES)}")
    layout = OFFICIAL_LAYOUTS[dataset]
    dest = Path(dest)
    target = dest / layout.folder
    missing = [name for name in layout.files if not (target / name).is_file()]
    if not missing:
        return target
    if target.exists():
        raise UserError(f"{target} exists but lacks {', '.join(missing)}: remove that folder and download again")
    official_url, official_md5 = OFFICIAL_ARCHIVES[dataset]
    url, md5 = url or official_url, md5 or official_md5
    dest.mkdir(parents=True, exist_ok=True)
    handle, archive_name = tempfile.mkstemp(prefix=f".{dataset}.", suffix=".tar.gz", dir=dest)
    archive = Path(archive_name)
    try:
        with os.fdopen(handle, "wb") as sink:
            actual_md5 = _stream(url, sink, dest)
        if actual_md5 != md5.lower():
            raise UserError(
                f"{url} gave a file with md5 {actual_md5}, expected {md5}: try again, or download the archive "
                f"by hand and extract it into {dest}"
            )
        _extract(archive, dest, layout.folder)
    finally:
        archive.unlink(missing_ok=True)
    return target


def _stream(url: str, sink: BinaryIO, dest: Path) -> str:
    """Copy `url` into `sink` and return its md5, hashing as it streams to avoid a second read."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=None) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    sink.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"cannot reach {url} ({reason}): are you offline? download the archive by hand and extract it into {dest}"
        ) from None
    return digest.hexdigest()


def _extract(archive: Path, dest: Path, folder: str) -> None:
    """The "data" filter refuses absolute paths, links out of the tree and device files."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=dest))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        if not (staging / folder).is_dir():
            raise UserError(f"the downloaded archive has no {folder} folder: download it by hand and extract it into {dest}")
        os.replace(staging / folder, dest / folder)
    except (tarfile.TarError, OSError) as err:
        raise UserError(f"cannot extract {archive.name} ({err}): download it by hand and extract it into {dest}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
