"""Freed blocks are handed out again without a system call or a page fault (ru_minflt)."""


def test_fifty_cycles_of_64_mib_take_almost_no_page_faults(pools, python):
    pools.ensure_free("2M", 64)
    r = python("""
        def cycles():
            faults = []
            for i in range(50):
                start = minflt()
                t = torch.empty(64 << 20, dtype=torch.uint8)
                t.fill_(i)
                assert t[12345].item() == i
                del t
                faults.append(minflt() - start)
            return faults
        default_faults = sum(cycles())
        hpa.install()
        ours = cycles()
        s = hpa.memory_stats()
        report(default=default_faults, first=ours[0], rest=sum(ours[1:]),
               hits=s["num_cache_hits.hugetlb_2M"], maps=s["num_maps.hugetlb_2M"])
    """)
    # The first cycle maps and populates the 64 MiB segment (32 faults of 2 MiB) and touches the
    # pool's own bookkeeping for the first time (a few dozen 4 KiB faults, more or fewer with the
    # process's memory layout); every cycle after it is reuse: no fault at all.
    assert r["rest"] <= 4, r.values
    assert r["first"] <= 256, r.values
    assert r["maps"] <= 2 and r["hits"] >= 49
    # The default allocator maps and unmaps 64 MiB each time: 16384 faults of 4 KiB per cycle.
    assert r["default"] > 1000 * (r["first"] + r["rest"]), r.values


def test_a_freed_span_serves_a_smaller_request_and_another_packs_beside_it(pools, python):
    pools.ensure_free("2M", 16)
    r = python("""
        hpa.install()
        a = torch.empty(20 << 20, dtype=torch.uint8)
        addr = a.data_ptr()
        del a
        b = torch.empty(19 << 20, dtype=torch.uint8)     # cut from the same place
        c = torch.empty(4 << 20, dtype=torch.uint8)      # the same 32 MiB segment, after b
        report(same=b.data_ptr() == addr, after=c.data_ptr() == addr + (19 << 20),
               maps=hpa.memory_stats()["num_maps"])
    """)
    assert r["same"] and r["after"]
    assert r["maps"] == 1
