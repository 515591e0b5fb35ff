import os
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEATDIFF_CACHE", str(PROJECT_ROOT / ".cache" / "featdiff"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(PROJECT_ROOT / ".cache" / "featdiff" / "torchinductor"))
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
"""`make test` runs the tests on pytest-xdist workers, one per core: each worker, and each featdiff
process a test starts (OMP_NUM_THREADS is inherited), then gets one torch thread, so the workers
share the cores rather than oversubscribe them."""
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """LDMLR's packed CIFAR-LT splits; the tests need them and fail loudly without them."""
    root = (PROJECT_ROOT / ".." / "shared" / "data" / "cifar-lt").resolve()
    assert root.is_dir(), f"test data missing: {root} (see README, 'Data')"
    return root


@pytest.fixture(scope="session")
def digits_encoder(tmp_path_factory) -> str:
    """A digits CNN trained once per test process (stage 1 of a `ce` run: 15 epochs, seed 0), the
    path of its weights. Tests whose subject is not stage 1 start their digits runs from it
    (`encoder.checkpoint`) instead of training the same encoder again in every run."""
    from featdiff.config import config_from_dict
    from featdiff.pipeline import execute
    from featdiff.runs import Run

    folder = tmp_path_factory.mktemp("digits-encoder") / "run"
    config = config_from_dict({"name": "encoder", "method": "ce", "data": {"dataset": "digits"}, "encoder": {"epochs": 15}})
    execute(Run.create(folder, config))
    return str(folder / "encoder.safetensors")
