"""Inference latency of a small transformer, one request at a time: p50, p99 and the first request."""
import pytest

from conftest import params


@pytest.mark.parametrize("allocator,case", params("inference"))
def test_inference(measure, allocator, case):
    measure("inference", allocator, case)
