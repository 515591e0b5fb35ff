"""Where featdiff looks for data and keeps its caches, so every entry point agrees."""

import os
from pathlib import Path

DEFAULT_DATA_ROOT = Path("../shared/data/cifar-lt")


def cache_dir() -> Path:
    """Decoded datasets and extracted features live here; FEATDIFF_CACHE overrides."""
    return Path(os.environ.get("FEATDIFF_CACHE", Path.home() / ".cache" / "featdiff"))


def keep_torch_caches_in_featdiff_cache() -> None:
    """Point PyTorch's compiler cache at featdiff's cache folder (unless the user set it).

    Building any torch optimizer imports torch._dynamo, which creates `torchinductor_<user>` in
    the system temp folder; every run used to leave that empty folder behind. Under featdiff's
    cache, compiled kernels of `compute.compile` also survive between runs.
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
