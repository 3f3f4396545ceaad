"""Random gather (index_select, EmbeddingBag) of millions of rows from a 4 GiB table."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("gather"))
def test_gather(measure, allocator, case):
    measure("gather", allocator, case)
