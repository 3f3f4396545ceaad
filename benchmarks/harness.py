"""The pytest side of a benchmark: worker processes per allocator, the huge pages they need, and
the results of one run, side by side."""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys

import allocators
import workloads

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "worker.py")


class Unavailable(Exception):
    """This allocator configuration cannot run on this machine (a library is missing)."""


class Worker:
    """A worker process running one workload under one allocator configuration, with the huge
    pages it needs reserved for as long as it lives."""

    def __init__(self, work: workloads.Workload, alloc: allocators.Allocator, case: str | None) -> None:
        env, why = allocators.environment(alloc, work.prefault)
        if env is None:
            raise Unavailable(why)
        cmd = [sys.executable, WORKER, work.name] + ([case] if case else []) + (["--quick"] if work.quick else [])
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        try:
            self.info = self._read()["ready"]
        except BaseException:
            self.close()
            raise

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            rc = self._proc.wait()
            raise RuntimeError(f"worker exited with status {rc} (its stderr is above)")
        return json.loads(line)

    def _send(self, obj) -> dict:
        self._proc.stdin.write(json.dumps(obj) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def round(self, case: str) -> dict:
        return self._send({"op": "round", "case": case})

    def finish(self) -> dict:
        return self._send({"op": "finish"})

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _reserve(stack: contextlib.ExitStack, work, alloc) -> dict:
    """Reserves the huge pages a configuration needs for a workload; returns the free pages."""
    need = work.hugetlb_need()
    if "1G" in alloc.hugetlb:
        got = stack.enter_context(allocators.reserved({"1G": need["1G"]}))
        # Short of 1 GiB pages, tensors meant for them go to 2 MiB pages, each whole.
        short = need["1G"] if got.get("1G", 0) * allocators.PAGE_BYTES["1G"] < need["1G"] else 0
        return {**got, **stack.enter_context(allocators.reserved({"2M": need["2M beside 1G"] + short}))}
    if "2M" in alloc.hugetlb:
        return stack.enter_context(allocators.reserved({"2M": need["2M"]}))
    return {}


class Workers:
    """Keeps at most one worker alive: the next request for another (workload, allocator) pair
    ends the current one. The huge pages of a (workload, allocator) pair are reserved once for
    all its workers (one per case or per round), so one configuration holds pages at a time."""

    def __init__(self) -> None:
        self._key = None
        self._worker: Worker | None = None
        self._pages_key = None
        self._pages = contextlib.ExitStack()
        self.pages: dict = {}

    def get(self, work, alloc, case) -> Worker:
        key = (work.name, alloc.name, case if work.process_per != "group" else None, work.quick)
        if key != self._key or work.process_per == "round":
            self.close_worker()
            if key[:2] + key[3:] != self._pages_key:
                self._pages.close()
                self.pages = _reserve(self._pages, work, alloc)
                self._pages_key = key[:2] + key[3:]
            self._worker = Worker(work, alloc, key[2])
            self._key = key
        return self._worker

    def close_worker(self) -> None:
        if self._worker is not None:
            w, self._worker, self._key = self._worker, None, None
            w.close()

    def close(self) -> None:
        self.close_worker()
        self._pages.close()
        self._pages_key = None


def expected_pages(alloc: allocators.Allocator) -> str | None:
    """How the kernel should back a workload's big tensor under this configuration."""
    if "1G" in alloc.hugetlb:
        return "1G"
    return "2M" if alloc.hugetlb else None


def summarize(values: list[float], percentiles: bool) -> dict:
    out = {"median": statistics.median(values), "n": len(values)}
    if percentiles and len(values) >= 2:
        qs = statistics.quantiles(values, n=100, method="inclusive")
        out["p50"], out["p99"] = qs[49], qs[98]
        out["first"] = values[0]
    return out


class Results:
    """Everything one run measured: results[group][case][allocator] = {metric: summary, ...}."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.info: dict = {}       # (group, allocator) -> facts the worker reported
        self.skipped: dict = {}    # allocator -> why it did not run

    def add(self, work, case, alloc, samples: list[dict], info: dict) -> None:
        per = {}
        for m in next(c for c in work.cases if c.name == case).metrics:
            per[m.key] = summarize([s[m.key] for s in samples], getattr(work, "percentiles", False))
            per[m.key]["samples"] = [s[m.key] for s in samples]
        self.data.setdefault(work.name, {}).setdefault(case, {})[alloc.name] = per
        self.info.setdefault(work.name, {}).setdefault(alloc.name, {}).update(info)

    def to_json(self) -> dict:
        return {"results": self.data, "info": self.info, "skipped": self.skipped}
