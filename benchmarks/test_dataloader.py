"""Image batches from forked DataLoader workers: batches/s and page faults per batch, main and workers."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("dataloader"))
def test_dataloader(measure, allocator, case):
    measure("dataloader", allocator, case)
