"""Many threads: allocate+free pairs from 1 to 16 C++ threads, small and large, same-thread and
cross-thread frees."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("threads"))
def test_threads(measure, allocator, case):
    measure("threads", allocator, case)
