"""Text generation with a loaded GPT-2: tokens per second at batch 1 and 8, and the load time."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("generate"))
def test_generate(measure, allocator, case):
    measure("generate", allocator, case)
