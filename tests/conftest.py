"""Fixtures: huge-page pools set up and restored around tests, and isolated Python subprocesses.

Every test that installs the allocator does so in a fresh interpreter (install() is process-wide
and, by design, never fully undone), started by `run_python`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
# kernel.py, and the tests' native module hpa_testing (built by ./run: tests/native/build.py).
sys.path[:0] = [TESTS_DIR, os.path.join(TESTS_DIR, "native")]
import kernel  # noqa: E402


def _online_nodes() -> int:
    try:
        with open("/sys/devices/system/node/online") as f:
            text = f.read().strip()
    except OSError:
        return 1
    return sum(int(hi) - int(lo) + 1 for lo, _, hi in (
        (part.partition("-")[0], "-", part.partition("-")[2] or part) for part in text.split(",")))


# tests/numa needs two NUMA nodes; on a smaller machine, tests/numa/run-in-vm runs it in a VM that
# has them (`./run test` does both).
collect_ignore = ["numa"] if _online_nodes() < 2 else []


def _can_write_pools() -> bool:
    return os.access(os.path.join(kernel.HUGEPAGES, kernel.SIZE_DIRS["2M"], "nr_hugepages"), os.W_OK)


class HugePagePools:
    """Sets the kernel's pools for a test and puts the previous sizes back afterwards."""

    def __init__(self) -> None:
        self._saved: dict[str, int] = {}

    def ensure_free(self, size: str, pages: int) -> None:
        """At least `pages` free pages of `size`; skips the test when the system cannot give them."""
        free = kernel.unreserved_free(size)
        if free >= pages:
            return
        if not _can_write_pools():
            pytest.skip(f"needs {pages} free {size} huge pages and root to reserve them (have {free})")
        self.set_free(size, pages)

    def set_free(self, size: str, pages: int) -> None:
        """Exactly `pages` free pages of `size` (other users' pages stay theirs)."""
        if not _can_write_pools():
            pytest.skip(f"needs root to set the {size} huge page pool")
        self._saved.setdefault(size, kernel.pool(size, "nr_hugepages"))
        in_use = kernel.pool(size, "nr_hugepages") - kernel.pool(size, "free_hugepages")
        got = kernel.set_pool(size, in_use + pages) - in_use
        if got < pages:
            self.restore()
            pytest.skip(f"the kernel gave {got} of {pages} free {size} huge pages (memory fragmented)")

    def restore(self) -> None:
        for size, pages in self._saved.items():
            kernel.set_pool(size, pages)
        self._saved.clear()


@pytest.fixture
def pools():
    p = HugePagePools()
    yield p
    p.restore()


PRELUDE = """
import json, os, resource, sys
sys.path[:0] = [{tests_dir!r}, os.path.join({tests_dir!r}, "native")]
import torch
import kernel
import hugepage_allocator as hpa
def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""


class Result:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        self.values = json.loads(lines[-1][len("RESULT "):]) if lines else {}

    def __getitem__(self, key):
        return self.values[key]


def run_python(code: str, env: dict | None = None, check: bool = True, timeout: float = 300,
               setup: str = "") -> Result:
    """Runs `code` (after PRELUDE: torch, kernel, hpa, report(); then `setup`) in a fresh interpreter."""
    script = PRELUDE.format(tests_dir=TESTS_DIR) + textwrap.dedent(setup) + textwrap.dedent(code)
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    result = Result(proc)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return result


@pytest.fixture
def python():
    return run_python
