"""Benchmarks: each case timed beside its baseline in the same run; a side-by-side table at the end."""
import collections

import pytest

_RESULTS = collections.defaultdict(dict)  # workload -> {allocator: median ns per pair}


@pytest.fixture
def record():
    def put(workload: str, allocator: str, value: float) -> None:
        _RESULTS[workload][allocator] = value
    return put


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("hot path: median ns per allocate+free pair, from C++")
    tr.write_line(f"{'size':>10} {'default':>10} {'hugepage':>10} {'ratio':>8}")
    for workload, by in _RESULTS.items():
        d, h = by.get("default"), by.get("hugepage")
        ratio = f"{d / h:7.2f}x" if d and h else ""
        tr.write_line(f"{workload:>10} {d or float('nan'):10.1f} {h or float('nan'):10.1f} {ratio:>8}")
