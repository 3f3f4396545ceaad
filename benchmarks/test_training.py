"""End-to-end CPU training: a recommendation model and a small transformer, steps per second."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("training"))
def test_training(measure, allocator, case):
    measure("training", allocator, case)
