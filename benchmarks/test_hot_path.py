"""Hot path: cached allocate+free pairs, small and large, from C++ and from `torch.empty`."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("hot_path"))
def test_hot_path(measure, allocator, case):
    measure("hot_path", allocator, case)
