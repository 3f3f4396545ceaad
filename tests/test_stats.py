"""memory_stats() against what was done, and empty_cache() against the kernel's pool counters."""


def test_stats_follow_allocations_and_frees(pools, python):
    pools.ensure_free("2M", 64)
    r = python("""
        hpa.install()
        a = torch.empty((5 << 20) + 1, dtype=torch.uint8)   # a span of 5 MiB + 64 KiB
        b = torch.empty(8 << 20, dtype=torch.uint8)
        c = torch.empty(1000, dtype=torch.uint8)            # a small object of the 1024-byte class
        s1 = hpa.memory_stats()
        del a
        s2 = hpa.memory_stats()
        peak = hpa.max_memory_allocated()
        hpa.reset_peak_memory_stats()
        s3 = hpa.memory_stats()
        keys = ["allocated_bytes.all.current", "requested_bytes.all.current", "slack_bytes.all.current",
                "reserved_bytes.all.current", "allocated_bytes.all.freed", "allocated_bytes.all.allocated",
                "num_maps"]
        report(s1={k: s1[k] for k in keys}, s2={k: s2[k] for k in keys}, peak=peak,
               peak_after_reset=s3["allocated_bytes.all.peak"], summary=hpa.memory_summary())
    """)
    M, K = 1 << 20, 1 << 10
    a, b, c = 5 * M + 64 * K, 8 * M, K
    assert r["s1"] == {"allocated_bytes.all.current": a + b + c, "requested_bytes.all.current": a + b + c - (64 * K - 1),
                       "slack_bytes.all.current": 64 * K - 1, "reserved_bytes.all.current": 32 * M,
                       "allocated_bytes.all.freed": 0, "allocated_bytes.all.allocated": a + b + c,
                       "num_maps": 1}, r["s1"]
    # a, b and the first slab of small objects (64 KiB) share one 32 MiB segment
    assert r["s2"]["allocated_bytes.all.current"] == b + c
    assert r["s2"]["reserved_bytes.all.current"] == 32 * M, "a freed span stays cached"
    assert r["s2"]["allocated_bytes.all.freed"] == a
    assert r["peak"] == a + b + c and r["peak_after_reset"] == b + c
    assert "Allocated memory" in r["summary"] and "hugetlb_2M" in r["summary"]


def test_empty_cache_returns_every_free_huge_page_to_the_kernel(pools, python):
    pools.ensure_free("2M", 64)
    r = python("""
        free0 = kernel.pool("2M", "free_hugepages")
        hpa.install()
        keep = torch.empty(16 << 20, dtype=torch.uint8)   # a segment of its own, in use throughout
        blocks = [torch.empty(n << 20, dtype=torch.uint8) for n in (4, 10, 30)]
        del blocks
        cached = kernel.pool("2M", "free_hugepages")
        released = hpa.empty_cache()
        after = kernel.pool("2M", "free_hugepages")
        report(free0=free0, cached=cached, after=after, released=released,
               reserved=hpa.memory_stats()["reserved_bytes.all.current"], keep=kernel.page_size_kb(keep.data_ptr()))
    """)
    assert r["cached"] < r["free0"] - 8 - 22, "the freed blocks' pages are still held"
    assert r["after"] == r["free0"] - 8, "only the live 16 MiB tensor keeps its pages"
    assert r["released"] == (r["after"] - r["cached"]) * (2 << 20)
    assert r["reserved"] == 16 << 20 and r["keep"] == 2048


def test_profiler_sees_allocations_from_the_pool(pools, python):
    pools.ensure_free("2M", 32)
    r = python("""
        from torch.profiler import ProfilerActivity, profile
        hpa.install()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            t = torch.empty(16 << 20, dtype=torch.uint8)
            del t
        rows = {e.key: e.self_cpu_memory_usage for e in prof.key_averages()}
        report(empty=rows.get("aten::empty", 0), ours=hpa.memory_stats()["num_allocs"])
    """)
    assert r["ours"] == 1
    assert r["empty"] == 16 << 20
