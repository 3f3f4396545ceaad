"""NUMA placement over a fake OS of 4 and 8 nodes: routes, binding, fallback across nodes, homes.

The fake's nodes lie on a line (node i is 10 * |i - j| + 10 from node j), each with its own pool of
hugetlb pages that populate() takes from as the mapping's policy says, like the kernel.
"""
import pytest
import torch  # noqa: F401  (loads libtorch for the native module)

from hpa_testing import FakePool

G1, M2, THP, BASE = 0, 1, 2, 3
LOCAL, PREFERRED, BIND, INTERLEAVE = 0, 1, 2, 3          # NumaMode (placement.h)
P_DEFAULT, P_PREFERRED, P_BIND, P_INTERLEAVE = 0, 1, 2, 3  # MemPolicy (os.h)
K, M = 1 << 10, 1 << 20


def nodes_of(pool, addr):
    """{node: 2 MiB chunks} of hugetlb memory behind the mapping that holds addr."""
    return {n: c for n, c in enumerate(pool.node_pages(addr)) if c}


def mask(*nodes):
    return sum(1 << n for n in nodes)


@pytest.fixture
def eight():
    p = FakePool(nodes=8, cpus_per_node=1, pages_2m=64)
    yield p
    del p


@pytest.mark.parametrize("nodes", [4, 8])
def test_local_requests_get_huge_pages_of_their_own_node(nodes):
    p = FakePool(nodes=nodes, cpus_per_node=2, pages_2m=64)
    for node in range(nodes):
        addr, _ = p.alloc(8 * M, node=node)
        assert nodes_of(p, addr) == {node: 16}, "a fresh 32 MiB segment, all on the home node"
        assert p.policy_of(addr) == (P_BIND, mask(node)), "hugetlb is bound strictly, before populate"
        small, _ = p.alloc(1000, node=node)
        assert set(nodes_of(p, small)) == {node}
    s = p.stats()
    assert all(s[f"allocated_bytes.node{n}.current"] > 8 * M for n in range(nodes))
    assert s["num_node_fallbacks"] == 0


def test_local_falls_back_to_the_nearest_nodes_huge_pages_before_thp(eight):
    eight.set_free_pages(M2, 0, node=3)
    addr, _ = eight.alloc(8 * M, node=3)
    assert nodes_of(eight, addr) == {2: 16}, "node 2 and 4 are nearest; the lower id first"
    eight.set_free_pages(M2, 0, node=2)
    addr, _ = eight.alloc(40 * M, node=3)
    assert nodes_of(eight, addr) == {4: 20}, "then node 4 (distance 20) before node 1 (30)"
    s = eight.stats()
    assert s["num_node_fallbacks.node2"] == 1 and s["num_node_fallbacks.node4"] == 1
    assert s["num_map_failures.node3"] >= 1
    assert s["num_allocs.thp"] == 0, "explicit huge pages of other nodes come before THP"


def test_local_takes_thp_on_the_home_node_when_no_node_has_huge_pages(eight):
    eight.set_free_pages(M2, 0)
    addr, _ = eight.alloc(8 * M, node=5)
    assert nodes_of(eight, addr) == {}
    assert eight.policy_of(addr) == (P_PREFERRED, mask(5)), "THP prefers the home node"
    assert eight.stats()["num_allocs.node5"] == 1 and eight.stats()["num_fallbacks.thp"] == 1


def test_bind_places_memory_on_the_bound_node_from_any_cpu(eight):
    assert eight.set_placement(BIND, mask(5)) == "bind:5"
    addr, _ = eight.alloc(8 * M, node=0)
    assert nodes_of(eight, addr) == {5: 16}
    small, _ = eight.alloc(100, node=0)
    assert set(nodes_of(eight, small)) == {5}


def test_bind_falls_back_to_thp_on_the_same_node_never_to_another_nodes_pages(eight):
    eight.set_placement(BIND, mask(5))
    eight.set_free_pages(M2, 0, node=5)
    addr, _ = eight.alloc(8 * M, node=0)
    assert nodes_of(eight, addr) == {}
    assert eight.policy_of(addr) == (P_BIND, mask(5)), "fallback pages are bound to node 5 too"
    s = eight.stats()
    assert s["num_node_fallbacks"] == 0 and s["num_fallbacks.thp"] == 1
    assert eight.free_pages(M2) == 7 * 64, "no other node's huge page was touched"


def test_bind_to_several_nodes_starts_nearest_and_spills_inside_the_set(eight):
    eight.set_placement(BIND, mask(1, 6))
    addr, _ = eight.alloc(8 * M, node=0)
    assert nodes_of(eight, addr) == {1: 16}, "node 1 is the bound node nearest to CPU node 0"
    eight.set_free_pages(M2, 0, node=1)
    addr, _ = eight.alloc(40 * M, node=0)
    assert nodes_of(eight, addr) == {6: 20}, "node 0 itself is not in the set"


def test_preferred_uses_its_node_first_then_the_nearest_others(eight):
    assert eight.set_placement(PREFERRED, mask(3)) == "preferred:3"
    addr, _ = eight.alloc(8 * M, node=7)
    assert nodes_of(eight, addr) == {3: 16}
    eight.set_free_pages(M2, 0, node=3)
    addr, _ = eight.alloc(40 * M, node=7)
    assert nodes_of(eight, addr) == {2: 20}


@pytest.mark.parametrize("nodes", [4, 8])
def test_interleave_spreads_large_tensors_over_every_node(nodes):
    p = FakePool(nodes=nodes, cpus_per_node=1, pages_2m=64)
    assert p.set_placement(INTERLEAVE, 0) == f"interleave:0-{nodes - 1}"
    addr, _ = p.alloc(64 * M, node=0)
    assert nodes_of(p, addr) == {n: 32 // nodes for n in range(nodes)}
    assert p.policy_of(addr) == (P_INTERLEAVE, mask(*range(nodes)))
    assert p.stats()["allocated_bytes.interleave.current"] == 64 * M
    small, _ = p.alloc(4 * K, node=1)
    assert set(nodes_of(p, small)) == {1}, "small objects stay local"


def test_interleave_over_some_nodes_uses_only_those(eight):
    eight.set_placement(INTERLEAVE, mask(1, 3))
    addr, _ = eight.alloc(64 * M, node=0)
    assert nodes_of(eight, addr) == {1: 16, 3: 16}


def test_an_unset_placement_follows_the_process_memory_policy(eight):
    eight.set_thread_policy(P_BIND, mask(6))
    assert eight.set_placement(-1) == "bind:6"
    addr, _ = eight.alloc(8 * M, node=0)
    assert nodes_of(eight, addr) == {6: 16}
    eight.set_thread_policy(P_INTERLEAVE, mask(*range(8)))
    assert eight.set_placement(-1) == "interleave:0-7"
    eight.set_thread_policy(P_PREFERRED, mask(2))
    assert eight.set_placement(-1) == "preferred:2"
    eight.set_thread_policy(P_DEFAULT, 0)
    assert eight.set_placement(-1) == "local"
    eight.set_thread_policy(P_BIND, mask(6))
    assert eight.set_placement(LOCAL, 0) == "local", "a setting overrides the process policy"


def test_a_large_block_freed_anywhere_returns_to_its_home_nodes_heap():
    p = FakePool(nodes=4, cpus_per_node=1, pages_2m=64)
    a, _ = p.alloc(8 * M, node=1)
    p.free(a)                                   # a free carries no node: the block knows its home
    b, _ = p.alloc(8 * M, node=0)
    assert b != a and nodes_of(p, b) == {0: 16}, "node 0 does not reuse node 1's memory"
    c, _ = p.alloc(8 * M, node=1)
    assert c == a, "node 1 reuses its own freed span"


def test_a_thread_that_moves_to_another_node_gets_that_nodes_small_objects():
    p = FakePool(nodes=4, cpus_per_node=1, pages_2m=64)
    first = [p.alloc(512, node=0)[0] for _ in range(20)]
    moved = [p.alloc(512, node=2)[0] for _ in range(20)]
    assert all(set(nodes_of(p, a)) == {0} for a in first)
    assert all(set(nodes_of(p, a)) == {2} for a in moved)
    for a in first:
        p.free(a)                               # freed by the thread now on node 2
    again = [p.alloc(512, node=2)[0] for _ in range(20)]
    assert not set(again) & set(first), "node 0's objects went home, not into node 2's cache"
    assert all(set(nodes_of(p, a)) == {2} for a in again)
