"""When explicit pages run out: transparent huge pages, then ordinary pages. Never a crash."""


def test_twelve_64_mib_tensors_through_a_16_mib_pool_are_all_correct(pools, python):
    pools.set_free("2M", 8)
    r = python("""
        hpa.install()
        tensors = []
        for i in range(12):
            t = torch.empty(64 << 20, dtype=torch.uint8)
            t.fill_(i + 1)
            tensors.append(t)
        s = hpa.memory_stats()
        correct = all(bool((t == i + 1).all()) for i, t in enumerate(tensors))
        maps = [kernel.mapping_of(t.data_ptr()) for t in tensors]
        report(correct=correct, kps=[m.kernel_page_kb for m in maps],
               thp_kb=[m.anon_huge_kb for m in maps], fallbacks=s["num_fallbacks.thp"],
               failures=s["num_map_failures.hugetlb_2M"], free=kernel.pool("2M", "free_hugepages"))
    """)
    assert r["correct"]
    assert r["kps"] == [4] * 12, "64 MiB cannot come from an 8-page pool"
    assert all(kb > 0 for kb in r["thp_kb"]), "the fallback is transparent huge pages"
    assert r["fallbacks"] == 12
    # Back-off: a dry pool is not asked again for every allocation.
    assert r["failures"] < 12


def test_small_requests_still_use_the_pages_that_are_left(pools, python):
    pools.set_free("2M", 8)
    r = python("""
        hpa.install()
        big = torch.empty(64 << 20, dtype=torch.uint8)     # refused by the pool
        small = torch.empty(8 << 20, dtype=torch.uint8)    # fits what is left
        report(big=kernel.page_size_kb(big.data_ptr()), small=kernel.page_size_kb(small.data_ptr()))
    """)
    assert r.values == {"big": 4, "small": 2048}


def test_cached_pages_are_given_back_to_serve_a_request_that_does_not_fit(pools, python):
    pools.set_free("2M", 20)
    r = python("""
        hpa.install()
        a = torch.empty(20 << 20, dtype=torch.uint8)   # a 32 MiB segment: 16 of the 20 pages
        del a                                          # cached
        b = torch.empty(36 << 20, dtype=torch.uint8)   # needs 18: only if the cache gives back
        report(kps=kernel.page_size_kb(b.data_ptr()), unmaps=hpa.memory_stats()["num_unmaps"])
    """)
    assert r.values == {"kps": 2048, "unmaps": 1}


def test_no_fallback_makes_an_empty_pool_an_out_of_memory_error(pools, python):
    pools.set_free("2M", 0)
    r = python("""
        hpa.install(fallback=[])
        out = {}
        for name, n in (("large", 8 << 20), ("small", 100)):
            try:
                torch.empty(n, dtype=torch.uint8)
                out[name] = None
            except torch.OutOfMemoryError as e:
                out[name] = str(e).splitlines()[0]
        report(**out)
    """)
    assert r["large"] and "hugetlb_2M" in r["large"]
    assert r["small"] and "hugetlb_2M" in r["small"], "a small request's error names what was tried too"
