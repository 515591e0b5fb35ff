"""What the benchmarks measure about the machine they run on."""

from __future__ import annotations

import time

import torch


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """fp32 matrix-multiply throughput at the current torch threads: the peak sampling is set against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9
