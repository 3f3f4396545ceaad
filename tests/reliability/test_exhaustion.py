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
    pools.set_free("2M", 80)
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


TRAINING = """
    import mmap
    torch.set_num_threads(1)
    def train(steps, on_step):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                    torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses, kps = [], []
        for step in range(steps):
            batch = 256 if step < 4 else 4096            # from step 4 on, the loop needs more memory
            g = torch.Generator().manual_seed(step)
            x = torch.randn(batch, 512, generator=g)
            y = torch.randint(0, 10, (batch,), generator=g)
            outs = [x]
            for layer in model:
                outs.append(layer(outs[-1]))
            loss = torch.nn.functional.cross_entropy(outs[-1], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            # The smallest page under this step's activations, as the kernel maps them.
            kps.append(min(kernel.page_size_kb(t.data_ptr()) for t in outs) if hpa.is_installed() else 0)
            del x, y, outs, loss
            on_step(step)
        return losses, kps
    reference, _ = train(STEPS, lambda step: None)
    hog = []
    def take_every_free_page():
        free = kernel.unreserved_free("2M")
        if free > 0:
            m = mmap.mmap(-1, free << 21, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)  # MAP_HUGETLB
            for offset in range(0, free << 21, 2 << 20):
                m[offset] = 1                # faulted in: taken, not only reserved
            hog.append(m)
"""


def _train_through_a_dry_pool(python, come_back):
    return python(setup=TRAINING.replace("STEPS", "30"), code=f"""
        hpa.install()
        def on_step(step):
            if step == 2:
                take_every_free_page()       # another job takes every free huge page
            if step == 10:
                {come_back}
        losses, kps = train(30, on_step)
        s = hpa.memory_stats()
        report(same=torch.allclose(torch.tensor(losses), torch.tensor(reference), rtol=1e-4, atol=1e-6),
               kps=kps, fallbacks=s["num_fallbacks.thp"] + s["num_fallbacks.base"])
    """, timeout=300)


def test_training_goes_on_when_the_pool_runs_dry_and_empty_cache_brings_pages_back(pools, python):
    pools.set_free("2M", 80)
    r = _train_through_a_dry_pool(python, "while hog: hog.pop().close()\n                hpa.empty_cache()")
    assert r["same"], "the loss curve is the default allocator's"
    kps = r["kps"]
    assert kps[:4] == [2048] * 4, "on huge pages before the pool runs dry"
    assert 4 in kps[4:11], f"the steps that need more memory than is left fall back: {kps}"
    assert r["fallbacks"] > 0
    assert kps[11:] == [2048] * 19, f"pages given back are used from the next step on: {kps}"


def test_training_goes_on_when_the_pool_runs_dry_and_a_larger_pool_is_used_again(pools, python):
    pools.set_free("2M", 80)
    r = _train_through_a_dry_pool(python, """
                nr = kernel.pool("2M", "nr_hugepages")
                kernel.set_pool("2M", nr + 64)  # the administrator grows the pool""")
    assert r["same"], "the loss curve is the default allocator's"
    kps = r["kps"]
    assert kps[:4] == [2048] * 4
    assert 4 in kps[4:11] and r["fallbacks"] > 0
    assert kps[-10:] == [2048] * 10, "new allocations find the new pages once the back-off has passed"
