"""Random sequences of allocations and frees over the fake OS: live blocks never overlap, every byte
is accounted, the stats equal the sum of the live blocks, everything goes back at the end, and no
system call was made under a pool lock (hpa_testing counts them: Note [Lock checks])."""
import torch  # noqa: F401  (loads libtorch for the native module)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpa_testing import FakePool

K, M = 1 << 10, 1 << 20
sizes = st.one_of(
    st.integers(1, 4 * K),             # small classes
    st.integers(4 * K, 256 * K),       # large small classes
    st.integers(256 * K + 1, 6 * M),   # spans
    st.integers(6 * M, 40 * M),        # spans that need their own segment
)
ops = st.lists(st.tuples(st.sampled_from(["alloc", "free"]), sizes, st.integers(0, 1 << 30),
                         st.integers(0, 1)), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, pages=st.integers(0, 200), cap=st.sampled_from([None, 0, 8 * M, 64 * M]))
def test_random_alloc_free_sequences_keep_the_pool_exact(ops, pages, cap):
    pool = FakePool(nodes=2, cpus_per_node=1, pages_2m=pages, pages_1g=0)  # pages on each node
    if cap is not None:
        pool.set_max_cached(cap)
    live = {}  # address -> (size asked, block size)
    for op, n, pick, node in ops:
        if op == "alloc" or not live:
            got = pool.alloc(n, node=node)
            assert got is not None, "THP and base pages never run out in the fake"
            addr, size = got
            assert size >= n and addr % 64 == 0
            for other, (_, osize) in live.items():
                assert addr + size <= other or other + osize <= addr, "live blocks overlap"
            live[addr] = (n, size)
        else:
            addr = sorted(live)[pick % len(live)]
            assert pool.free(addr) == live.pop(addr)[1]
        s = pool.stats()
        assert s["allocated_bytes.all.current"] == sum(size for _, size in live.values())
        assert s["reserved_bytes.all.current"] == pool.mapped_bytes
        assert s["requested_bytes.all.current"] == sum(n if n > 256 * K else size for n, size in live.values())
        assert pool.free_pages(1) == 2 * pages - s["reserved_bytes.hugetlb_2M.current"] // (2 * M)
    for addr in list(live):
        pool.free(addr)
    assert pool.stats()["allocated_bytes.all.current"] == 0
    pool.release()
    assert pool.live_mappings == 0 and pool.bad_unmaps == 0 and pool.free_pages(1) == 2 * pages
    assert pool.calls_under_lock == 0, "a system call was made while a pool lock was held"
