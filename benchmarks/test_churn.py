"""Allocation churn of a CPU training step: 8-256 MiB tensors allocated, written, freed; page faults counted."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("churn"))
def test_churn(measure, allocator, case):
    measure("churn", allocator, case)
