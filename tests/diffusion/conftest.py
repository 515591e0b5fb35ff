import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """These tests run many small ops; on the shared 2-core machine a second intra-op thread
    only adds barrier waits (an op can stall for a whole scheduler slice when another process
    holds the other core), so they run single-threaded and restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
