"""Helpers of the NUMA tests: per-node huge page pools and threads pinned to a CPU."""
from __future__ import annotations

import os
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernel  # noqa: E402,F401

class NodePools:
    """Sets per-node 2 MiB pools for a test and puts the previous sizes back afterwards."""

    def __init__(self) -> None:
        self._saved: dict[int, int] = {}

    def set_free(self, node: int, pages: int) -> None:
        if not os.access(f"/sys/devices/system/node/node{node}/hugepages", os.W_OK):
            pytest.skip("needs root to set the per-node huge page pools")
        self._saved.setdefault(node, kernel.node_pool(node, "2M", "nr_hugepages"))
        in_use = kernel.node_pool(node, "2M", "nr_hugepages") - kernel.node_pool(node, "2M", "free_hugepages")
        got = kernel.set_node_pool(node, "2M", in_use + pages) - in_use
        if got < pages:
            pytest.fail(f"node {node} gave {got} of {pages} free 2 MiB pages")

    def restore(self) -> None:
        for node, pages in self._saved.items():
            kernel.set_node_pool(node, "2M", pages)
        self._saved.clear()


def on_cpu(cpu: int, fn):
    """Runs fn() in a new thread pinned to `cpu` and returns its result (or raises its error)."""
    out: dict = {}

    def body():
        os.sched_setaffinity(0, {cpu})  # pid 0: the calling thread
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
