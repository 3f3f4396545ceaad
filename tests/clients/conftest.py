"""Fixtures of the client tests: `twin` runs one piece of client code in fresh interpreters, on
the default allocator and on this one (see twin.py)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from twin import Twin  # noqa: E402


@pytest.fixture
def twin(tmp_path):
    return Twin(tmp_path)
