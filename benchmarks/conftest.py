"""Benchmarks: every allocator on the same work in the same run, each in its own process; a table
of medians side by side at the end, and a report (markdown, charts, machine) in the results folder.

    pytest benchmarks [--quick] [--results DIR]

pytest-benchmark drives the rounds (each round is one request to the allocator's worker process and
its own timing covers that round trip); the figures in the tables are the worker's in-process
measures, which exclude the round trip.
"""
from __future__ import annotations

import os
import re

import pytest

import allocators
import harness
import report
import workloads

_RESULTS = harness.Results()
_WORKERS = harness.Workers()


def pytest_addoption(parser):
    g = parser.getgroup("hugepage-allocator benchmarks")
    g.addoption("--quick", action="store_true", help="small sizes and few rounds: a smoke test of minutes")
    g.addoption("--results", default=None,
                help="folder for the report (default benchmarks/results, or benchmarks/results/quick with --quick)")


def params(group: str):
    """(allocator, case) pairs of a workload group, allocator outermost so that one worker serves
    all cases of its allocator."""
    work = workloads.GROUPS[group]
    return [pytest.param(a.name, c.name, id=f"{c.name}-{a.name}")
            for a in allocators.for_workload(group) for c in work.cases]


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture
def measure(benchmark, quick):
    """measure(group, allocator, case): runs the case's rounds in that allocator's worker."""

    def run(group: str, alloc_name: str, case: str) -> None:
        work = workloads.GROUPS[group](quick)
        alloc = allocators.BY_NAME[alloc_name]
        try:
            samples, info = _rounds(work, alloc, case, benchmark.pedantic)
            # The huge page pools are the machine's: another job may shrink them between the
            # reservation and the worker's allocation. Then the data is not where this
            # configuration puts it, and the figures would be another configuration's: once more.
            if _misplaced(work, alloc, info):
                _WORKERS.close()
                samples, info = _rounds(work, alloc, case, _plain_pedantic)
                info["retried"] = "yes"
        except harness.Unavailable as e:
            _RESULTS.skipped[alloc_name] = str(e)
            pytest.skip(f"{alloc_name}: {e}")
        _RESULTS.add(work, case, alloc, samples, info)
        benchmark.extra_info.update({m: s["median"] for m, s in _RESULTS.data[group][case][alloc_name].items()})

    return run


def _plain_pedantic(target, setup=None, rounds=1, warmup_rounds=0, iterations=1):
    """benchmark.pedantic's rounds without its timing (it may be called once per test)."""
    for _ in range(warmup_rounds + rounds):
        if setup is not None:
            setup()
        target()


def _misplaced(work, alloc, info) -> bool:
    if not allocators.can_reserve():
        return False  # without root the pages are what is free: measuring again changes nothing
    want = harness.expected_pages(alloc)
    # The weights of `generate` are not judged here: where they end is what its configurations differ in.
    got = next((info[k] for k in ("table pages", "pages") if k in info), None)
    return want is not None and got is not None and any(p != want for p in re.split("[;,] ", got))


def _rounds(work, alloc, case, pedantic):
    rounds, warmup = work.quick_rounds if work.quick else work.rounds
    samples, info, state = [], {}, {}

    def start():
        state["worker"] = _WORKERS.get(work, alloc, case)
        info.update(state["worker"].info, **{f"free {k} pages": v for k, v in _WORKERS.pages.items()})
        return (), {}

    def one_round():
        samples.append(state["worker"].round(case))

    try:
        if work.process_per == "round":
            def finish_round():
                one_round()
                for k, v in state["worker"].finish().items():  # a process a round: keep each's
                    seen = info[k].split("; ") if k in info else []
                    info[k] = "; ".join(seen if v in seen else seen + [v])
            pedantic(finish_round, setup=start, rounds=rounds, iterations=1)
        else:
            start()
            pedantic(one_round, rounds=rounds, warmup_rounds=warmup, iterations=1)
            samples[:] = samples[warmup:]
            if work.process_per == "case" or case == work.cases[-1].name:
                info.update(state["worker"].finish())
    finally:
        if work.process_per == "case" or case == work.cases[-1].name:
            _WORKERS.close()
        elif work.process_per == "round":
            _WORKERS.close_worker()
    return samples, info


def pytest_sessionstart(session):
    _RESULTS.machine = report.machine()  # before any worker changes the huge page pools


def pytest_sessionfinish(session):
    _WORKERS.close()
    if not _RESULTS.data or session.config.getoption("--collectonly"):
        return
    quick = session.config.getoption("--quick")
    folder = session.config.getoption("--results") or os.path.join(
        os.path.dirname(__file__), "results", "quick" if quick else "")
    session.config._hpa_report = report.write(_RESULTS, folder, quick)


def pytest_terminal_summary(terminalreporter, config):
    if not _RESULTS.data:
        return
    tr = terminalreporter
    for group, text in report.text_tables(_RESULTS, config.getoption("--quick")):
        tr.section(group)
        for line in text.splitlines():
            tr.write_line(line)
    path = getattr(config, "_hpa_report", None)
    if path:
        tr.write_line(f"report: {path}")
