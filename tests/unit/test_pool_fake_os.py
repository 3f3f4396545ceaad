"""The pool's policy, driven over a fake OS layer (no mmap, no sysfs): spans, slabs, fallbacks, release."""
import errno

import pytest
import torch  # noqa: F401  (loads libtorch for the native module)

from hugepage_allocator._C import size_class, small_max
from hpa_testing import FakePool

G1, M2, THP, BASE = 0, 1, 2, 3
ALL = 0b1111
HUGE_FIRST = (1 << M2) | (1 << THP) | (1 << BASE)
K, M, G = 1 << 10, 1 << 20, 1 << 30
UNIT = 64 * K


@pytest.fixture
def pool():
    p = FakePool(nodes=1, pages_2m=512, pages_1g=0)
    yield p
    del p


def test_size_classes_are_64_byte_multiples_with_at_most_a_quarter_wasted():
    for n in [1, 63, 64, 65, 1000, 1024, 1025, 1300, 4097, 100_000, small_max()]:
        c = size_class(n)
        assert c >= n and c % 64 == 0
        assert c - n < max(64, n // 4 + 1)
    assert size_class(1) == 64 and size_class(1025) == 1280 and size_class(small_max()) == small_max()


def test_small_objects_are_64_byte_aligned_distinct_and_packed_in_one_slab(pool):
    blocks = [pool.alloc(100) for _ in range(500)]
    addrs = [a for a, _ in blocks]
    assert all(size == 128 for _, size in blocks)
    assert all(a % 64 == 0 for a in addrs)
    assert len(set(addrs)) == 500
    assert max(addrs) - min(addrs) < 500 * 128 + UNIT, "objects of one class sit side by side"
    assert pool.map_calls == 1, "one segment serves them all"


def test_a_large_request_is_split_from_a_segment_and_coalesced_back(pool):
    a, sa = pool.alloc(3 * M)
    b, sb = pool.alloc(5 * M + 1)
    assert sa == 3 * M and sb == 5 * M + UNIT
    assert b == a + sa, "the second span is cut right after the first"
    assert pool.map_calls == 1
    pool.free(a)
    pool.free(b)
    c, sc = pool.alloc(31 * M)       # only fits if a, b and the rest merged back into one span
    assert c == a and sc == 31 * M
    assert pool.map_calls == 1


def test_best_fit_takes_the_smallest_free_span_that_fits(pool):
    spans = [pool.alloc(n * M) for n in (4, 1, 2, 1, 3)]  # one segment: 4|1|2|1|3|rest
    gap_2m, gap_3m = spans[2][0], spans[4][0]
    pool.free(gap_2m)
    pool.free(gap_3m)
    assert pool.alloc(2 * M)[0] == gap_2m
    assert pool.alloc(3 * M)[0] == gap_3m


def test_a_new_segment_gives_back_the_unfilled_tail_of_the_previous_one(pool):
    a = pool.alloc(20 * M)                           # segment 1: 32 MiB, 12 free at its end
    b = pool.alloc(20 * M)                           # does not fit: segment 2; segment 1 trimmed
    s = pool.stats()
    assert s["reserved_bytes.all.current"] == 20 * M + 32 * M
    assert pool.free_pages(M2) == 512 - 10 - 16
    c = pool.alloc(10 * M)                           # the rest of segment 2
    assert c[0] == b[0] + 20 * M
    for x in (a, b, c):
        pool.free(x[0])


def test_frees_in_any_order_leave_one_free_span_per_segment(pool):
    blocks = [pool.alloc(n * UNIT) for n in range(1, 40)]
    for i in list(range(0, 39, 2)) + list(range(1, 39, 2)):
        assert pool.free(blocks[i][0]) == blocks[i][1]
    s = pool.stats()
    assert s["allocated_bytes.all.current"] == 0
    assert pool.release() == s["reserved_bytes.all.current"]
    assert pool.live_mappings == 0 and pool.bad_unmaps == 0


def test_a_foreign_or_interior_pointer_is_not_ours(pool):
    a, size = pool.alloc(2 * M)
    assert pool.block_size(a) == size
    assert pool.block_size(a + UNIT) == 0 and pool.free(a + UNIT) == 0
    assert pool.free(0x1000) == 0
    small, _ = pool.alloc(64)
    assert pool.block_size(small) == 64


def test_a_pool_that_runs_dry_falls_back_to_thp_and_back_again(pool):
    pool.set_free_pages(M2, 8)                       # 16 MiB of 2 MiB pages
    a = pool.alloc(12 * M)                           # 32 MiB refused: a 12 MiB segment
    b = pool.alloc(12 * M)                           # refused: THP
    s = pool.stats()
    assert s["allocated_bytes.hugetlb_2M.current"] == 12 * M
    assert s["allocated_bytes.thp.current"] == 12 * M
    assert s["num_fallbacks.thp"] == 1 and s["num_map_failures.hugetlb_2M"] >= 1
    pool.free(a[0])
    pool.free(b[0])
    assert pool.release() == s["reserved_bytes.all.current"]
    assert pool.free_pages(M2) == 8
    c = pool.alloc(12 * M)                           # pages are back: huge pages again
    assert pool.stats()["allocated_bytes.hugetlb_2M.current"] == 12 * M
    pool.free(c[0])


def test_a_refused_kind_backs_off_instead_of_asking_the_kernel_every_time(pool):
    pool.set_free_pages(M2, 0)
    calls = pool.map_calls
    blocks = [pool.alloc(4 * M, kinds=HUGE_FIRST) for _ in range(200)]
    assert all(b is not None for b in blocks)
    failures = pool.stats()["num_map_failures.hugetlb_2M"]
    assert failures < 20, failures
    assert pool.map_calls - calls < 200


def test_empty_cache_ends_the_back_off_of_a_heap_with_nothing_idle(pool):
    """Pages that came back from elsewhere are found at the next request after release() (what
    empty_cache() calls), even by a heap that had no idle segment of its own to give back."""
    pool.set_free_pages(M2, 16)
    held = pool.alloc(32 * M)                        # every page, in use
    refused = [pool.alloc(4 * M) for _ in range(8)]  # THP, and the 2 MiB heap backs off
    assert pool.stats()["allocated_bytes.thp.current"] == 8 * 4 * M
    pool.set_free_pages(M2, 64)                      # another process gave pages back
    pool.release()
    c = pool.alloc(4 * M)
    assert pool.stats()["allocated_bytes.hugetlb_2M.current"] == 32 * M + 4 * M
    for b in [held, c, *refused]:
        pool.free(b[0])


def test_idle_huge_pages_are_given_back_to_serve_a_request_that_does_not_fit(pool):
    pool.set_free_pages(M2, 20)                      # 40 MiB
    a = pool.alloc(20 * M)                           # a 32 MiB segment: 16 pages
    pool.free(a[0])                                  # idle
    b = pool.alloc(36 * M)                           # needs 18 pages: only after giving back 16
    assert b is not None
    assert pool.stats()["allocated_bytes.hugetlb_2M.current"] == 36 * M
    assert pool.unmap_calls == 1


def test_a_populate_failure_is_a_fallback_not_a_crash(pool):
    pool.fail_populate(4, errno.EFAULT)              # what a hugetlb cgroup limit looks like
    a = pool.alloc(4 * M)
    assert a is not None
    assert pool.stats()["allocated_bytes.thp.current"] == 4 * M
    assert pool.live_mappings == 1, "the refused hugetlb mappings were unmapped"


def test_no_fallback_and_no_pages_is_no_memory(pool):
    pool.set_free_pages(M2, 0)
    assert pool.alloc(4 * M, kinds=1 << M2) is None
    assert pool.alloc(100, kinds=1 << M2) is None


def test_max_cached_gives_back_idle_segments_on_free(pool):
    pool.set_max_cached(40 * M)
    blocks = [pool.alloc(30 * M) for _ in range(3)]  # three 30 MiB segments
    for a, _ in blocks:
        pool.free(a)
    s = pool.stats()
    assert s["reserved_bytes.all.current"] == 30 * M, "idle memory is kept up to the cap only"
    assert pool.live_mappings == 1


def test_release_gives_back_fully_free_slabs_and_segments(pool):
    smalls = [pool.alloc(4000)[0] for _ in range(100)]
    big = pool.alloc(40 * M)[0]
    for a in smalls:
        pool.free(a)
    pool.free(big)
    reserved = pool.stats()["reserved_bytes.all.current"]
    assert pool.release() == reserved
    assert pool.live_mappings == 0 and pool.stats()["reserved_bytes.all.current"] == 0


def test_a_gigantic_request_gets_a_1gib_head_and_a_2mib_tail():
    p = FakePool(nodes=1, pages_2m=512, pages_1g=2)
    a, size = p.alloc(G + 100 * M, kinds=ALL)
    assert size == G + 100 * M
    assert p.free_pages(G1) == 1 and p.free_pages(M2) == 512 - 50
    p.free(a)
    b = p.alloc(G + 50 * M, kinds=ALL)                # reuses the cached composite (under 1/8 spare)
    assert b[0] == a and p.map_calls == 1
    p.free(b[0])
    assert p.release() == G + 100 * M and p.free_pages(G1) == 2


def test_a_gigantic_request_without_2mib_pages_rounds_up_to_1gib_pages():
    p = FakePool(nodes=1, pages_2m=0, pages_1g=2)
    a, _ = p.alloc(G + 100 * M, kinds=ALL)
    assert p.free_pages(G1) == 0
    assert p.stats()["reserved_bytes.hugetlb_1G.current"] == 2 * G
    p.free(a)


def test_exact_1g_allocation_fails_cleanly_without_1g_pages(pool):
    assert pool.alloc_exact(100, G1) is None
    assert pool.alloc_exact(100, M2) is not None


def test_four_nodes_keep_their_own_heaps_and_blocks_go_home():
    p = FakePool(nodes=4, cpus_per_node=2, pages_2m=1024)
    blocks = {node: p.alloc(3 * M, node=node) for node in range(4)}
    s = p.stats()
    assert all(s[f"allocated_bytes.node{n}.current"] == 3 * M for n in range(4))
    p.free(blocks[2][0])
    s = p.stats()
    assert s["allocated_bytes.node2.current"] == 0 and s["reserved_bytes.node2.current"] == 32 * M
    again = p.alloc(3 * M, node=2)
    assert again[0] == blocks[2][0], "node 2's freed span is reused on node 2"


def test_small_objects_freed_on_another_node_return_to_their_home_node():
    p = FakePool(nodes=2, cpus_per_node=1, pages_2m=256)
    p.bind_thread_cache(0)
    objs = [p.alloc(256, node=0)[0] for _ in range(10)]
    p.bind_thread_cache(1)                            # the thread now caches for node 1
    for a in objs:
        p.free(a)                                     # go back to node 0's central lists
    s = p.stats()
    assert s["allocated_bytes.all.current"] == 0
    assert s["reserved_bytes.node1.current"] == 0, "nothing was cached on node 1"
    p.bind_thread_cache(0)
    again = [p.alloc(256, node=0)[0] for _ in range(10)]
    assert again == objs[::-1], "node 0 hands the same objects out again, most recently freed first"


def test_after_fork_the_child_never_reuses_inherited_memory(pool):
    a, _ = pool.alloc(4 * M)
    small, _ = pool.alloc(512)
    pool.free(a)
    pool.fork_child()
    b, _ = pool.alloc(4 * M)
    c, _ = pool.alloc(512)
    assert b != a and c != small, "inherited free memory is shared copy-on-write with the parent"
    pool.free(small)                                  # the last inherited block: segment unmapped
    assert pool.stats()["num_unmaps"] == 1
    pool.free(b)
    pool.free(c)


def test_after_fork_memory_mapped_in_the_child_is_reused_there(pool):
    """A segment idle at fork is dropped and its record recycled: the child's next segment must not
    take the 'inherited' mark from it (it once did, and the child's frees then corrupted the heap)."""
    a, _ = pool.alloc(4 * M)
    small, _ = pool.alloc(512)
    pool.free(a)
    pool.free(small)                                  # the segment is idle, still mapped
    pool.fork_child()                                 # dropped in the child, its record recycled
    assert pool.live_mappings == 0
    blocks = [pool.alloc(1 * M)[0] for _ in range(8)]
    objs = [pool.alloc(512)[0] for _ in range(8)]
    maps = pool.map_calls
    for b in blocks[::2]:
        assert pool.free(b) == 1 * M
    again = [pool.alloc(1 * M)[0] for _ in range(4)]
    assert sorted(again) == sorted(blocks[::2]), "spans freed in the child serve it again"
    for o in objs:
        assert pool.free(o) == 512
    assert [pool.alloc(512)[0] for _ in range(8)] != [None] * 8
    assert pool.map_calls == maps, "no new segment: the child's own segment is reused"
    for b in blocks[1::2] + again:
        assert pool.free(b) == 1 * M, "every block is still recognised as the pool's"


def test_after_fork_freeing_inherited_small_objects_writes_nothing_to_them(pool):
    """Writing a free-list link into shared memory would copy its huge page: a SIGBUS risk."""
    import ctypes

    objs = [pool.alloc(512)[0] for _ in range(10)]
    keep = pool.alloc(512)[0]                          # keeps the inherited segment mapped
    for i, a in enumerate(objs):
        ctypes.memset(a, 0x40 + i, 512)
    pool.fork_child()
    for a in objs:
        pool.free(a)
    assert all(ctypes.string_at(a, 512) == bytes([0x40 + i]) * 512 for i, a in enumerate(objs))
    pool.free(keep)                                    # the last one: the segment goes
    assert pool.live_mappings == 0


def test_small_requests_on_1gib_pages_share_one_page():
    p = FakePool(nodes=1, pages_2m=0, pages_1g=4)
    blocks = [p.alloc_exact(4 * M, G1) for _ in range(5)]
    assert all(b is not None for b in blocks)
    assert p.free_pages(G1) == 3 and p.map_calls == 1


def test_small_requests_find_pages_that_came_back_despite_back_off(pool):
    pool.set_free_pages(M2, 0)
    assert pool.alloc(100, kinds=1 << M2) is None       # refused: the heap backs off
    pool.set_free_pages(M2, 64)
    assert pool.alloc(100, kinds=1 << M2) is not None


def test_fork_copies_are_made_only_when_the_free_pages_cannot_cover_copy_on_write():
    """Note [Fork copies] (csrc/fork.h), both branches, through the handlers the process registers."""
    import ctypes

    p = FakePool(nodes=1, pages_2m=64, pages_1g=0)
    a, _ = p.alloc(3 * M)                                 # pages 0-1 of a 16-page segment in use
    ctypes.memset(a, 0x5A, 3 * M)
    mappings = p.live_mappings
    assert p.fork_parent() == 0, "48 free pages cover the 16 mapped: the child shares them"
    p.set_free_pages(M2, 15)                              # one page short
    assert p.fork_parent() == 2 * 2 * M, "the two huge pages that hold a block in use, whole"
    assert p.live_mappings == mappings, "the parent's side of the copies is gone after fork()"
    assert p.fork_child() == 2 * 2 * M
    assert ctypes.string_at(a, 3 * M) == b"\x5a" * (3 * M), "the child's copy carries the data"
    assert p.free(a) == 3 * M


def test_the_pool_knows_an_address_inside_its_memory_from_a_foreign_one(pool):
    a, size = pool.alloc(4 * M)
    b, _ = pool.alloc(4 * M)
    assert pool.holds(a) and pool.holds(a + size - 1) and pool.holds(a + 3 * M)
    assert "inside the block" in pool.describe(a + UNIT)
    pool.free(a)                                          # kept by this thread for its next 4 MiB
    assert pool.holds(a) and "freed already and kept in a thread's cache" in pool.describe(a)
    assert pool.free(a) == 0, "a second free of a kept block is refused: a double free"
    pool.free(b)
    c, _ = pool.alloc(28 * M)                             # beyond the free 24 MiB: a and b come back first
    assert c == a and pool.map_calls == 1
    pool.free(c)
    d, _ = pool.alloc(5 * M)                              # a, b and c coalesced: 5 MiB is cut at a
    assert d == a and "in the free span" in pool.describe(a + 5 * M)
    pool.free(d)
    pool.release()                                        # the segment goes back to the "kernel"
    assert not pool.holds(a)
    assert "given back to the kernel" in pool.describe(a)
    import ctypes
    foreign = ctypes.create_string_buffer(64)
    assert not pool.holds(ctypes.addressof(foreign))
    assert "no segment" in pool.describe(ctypes.addressof(foreign))
