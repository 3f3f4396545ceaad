"""First touch of a fresh 4 GiB tensor: page faults and zeroing, in a new process each round."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("first_touch"))
def test_first_touch(measure, allocator, case):
    measure("first_touch", allocator, case)
