"""Where featdiff looks for data and keeps its caches, so every entry point agrees."""

import os
from pathlib import Path

DEFAULT_DATA_ROOT = Path("../shared/data/cifar-lt")


def cache_dir() -> Path:
    """Decoded datasets and extracted features live here; FEATDIFF_CACHE overrides."""
    return Path(os.environ.get("FEATDIFF_CACHE", Path.home() / ".cache" / "featdiff"))
