import os
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEATDIFF_CACHE", str(PROJECT_ROOT / ".cache" / "featdiff"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(PROJECT_ROOT / ".cache" / "featdiff" / "torchinductor"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """LDMLR's packed CIFAR-LT splits; the tests need them and fail loudly without them."""
    root = (PROJECT_ROOT / ".." / "shared" / "data" / "cifar-lt").resolve()
    assert root.is_dir(), f"test data missing: {root} (see README, 'Data')"
    return root
