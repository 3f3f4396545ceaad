"""Fixtures of the NUMA tests, which need a machine of two nodes or more (tests/numa/run-in-vm boots
one). The allocator is installed once in the test process: starting a fresh interpreter costs half
a minute under the VM's software emulation, so the tests reconfigure it with install() instead."""
from __future__ import annotations

import pytest

from numa_util import NodePools, kernel

PAGES_PER_NODE = 160  # 320 MiB of 2 MiB pages on each node


def online_nodes() -> list[int]:
    from hugepage_allocator import _system  # noqa: PLC0415

    return sorted(_system.nodes())


@pytest.fixture(scope="session", autouse=True)
def two_nodes():
    nodes = online_nodes()
    if len(nodes) < 2:
        pytest.skip(f"needs two NUMA nodes, this machine has {len(nodes)}: run tests/numa/run-in-vm")
    return nodes


@pytest.fixture(scope="session")
def session_pools(two_nodes):
    p = NodePools()
    for node in two_nodes:
        if kernel.node_pool(node, "2M", "free_hugepages") < PAGES_PER_NODE:
            p.set_free(node, PAGES_PER_NODE)
    yield p
    p.restore()


@pytest.fixture
def hpa(session_pools):
    """The allocator, installed with default settings again after each test."""
    import hugepage_allocator  # noqa: PLC0415

    hugepage_allocator.install()
    yield hugepage_allocator
    hugepage_allocator.install()
    hugepage_allocator.empty_cache()


@pytest.fixture
def node_pools(session_pools):
    p = NodePools()
    yield p
    p.restore()
