"""Hot path: cached allocate+free pairs called from C++ (no Python in the loop), this allocator beside
PyTorch's default CPU allocator, for small and large sizes. `pairs` pairs per round; the figure is
the median over rounds of (round time / pairs)."""
import statistics

import pytest
import torch

import hugepage_allocator
from hugepage_allocator._C.testing import time_alloc_free

SIZES = {"64 B": 64, "4 KiB": 4 << 10, "100 KiB": 100 << 10, "1 MiB": 1 << 20, "8 MiB": 8 << 20,
         "64 MiB": 64 << 20}


@pytest.fixture(scope="module", autouse=True)
def installed():
    hugepage_allocator.install()
    torch.empty(1)  # first use: thread cache, first segment


@pytest.mark.parametrize("allocator", ["default", "hugepage"])
@pytest.mark.parametrize("size", list(SIZES))
def test_alloc_free_pair(benchmark, record, allocator, size):
    n = SIZES[size]
    pairs = 200 if (allocator == "default" and n > (32 << 20)) else 5000  # glibc maps big ones each time
    rounds = []

    def run():
        rounds.extend(time_alloc_free(allocator, n, rounds=1, pairs=pairs))

    benchmark.pedantic(run, rounds=21, iterations=1, warmup_rounds=2)
    median = statistics.median(rounds)
    benchmark.extra_info["ns_per_pair"] = median
    record(size, allocator, median)
    assert median > 0
