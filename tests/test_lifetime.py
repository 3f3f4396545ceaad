"""The allocator lives forever: tensors outlive uninstall() and interpreter exit; install() twice is harmless."""


def test_tensors_alive_at_interpreter_exit_free_cleanly(pools, python):
    pools.ensure_free("2M", 32)
    r = python("""
        hpa.install()
        keep = [torch.ones(4 << 20) for _ in range(3)]
        global_model = torch.nn.Linear(2048, 2048)
        report(ok=True)
        # exit with tensors alive: their storages are freed during interpreter teardown
    """)
    assert r.returncode == 0 and r["ok"]
    assert "Traceback" not in r.stderr and "terminate" not in r.stderr


def test_install_twice_is_harmless_and_applies_the_new_settings(pools, python):
    pools.ensure_free("2M", 32)
    r = python("""
        hpa.install()
        a = torch.empty(8 << 20, dtype=torch.uint8)
        hpa.install()
        hpa.install(min_size="16MB")
        b = torch.empty(8 << 20, dtype=torch.uint8)
        report(installed=hpa.is_installed(), a=kernel.page_size_kb(a.data_ptr()), b_ours=(hpa._C.block_size(b.data_ptr()) > 0),
               allocs=hpa.memory_stats()["num_allocs"])
    """)
    assert r.values == {"installed": True, "a": 2048, "b_ours": False, "allocs": 1}


def test_tensors_cross_install_and_uninstall_in_both_directions(pools, python):
    pools.ensure_free("2M", 32)
    r = python("""
        before = torch.full((4 << 20,), 1.0)           # default allocator
        hpa.install()
        during = torch.full((4 << 20,), 2.0)           # ours
        before.resize_(8 << 20)                        # resizes through the allocator that made it
        before[4 << 20:] = 1.0
        during.resize_(6 << 20)                        # ours: a new block from the pool
        during[4 << 20:] = 2.0
        late = torch.full((4 << 20,), 4.0)
        hpa.uninstall()
        after = torch.full((4 << 20,), 3.0)            # default again
        late.resize_(6 << 20)                          # made by us, resized after uninstall(): the
        late[4 << 20:] = 4.0                           # pool no longer serves, the default does
        ok = bool((before == 1).all() and (during == 2).all() and (after == 3).all() and (late == 4).all())
        kinds = [kernel.page_size_kb(t.data_ptr()) for t in (before, during, after, late)]
        ours = [(hpa._C.block_size(t.data_ptr()) > 0) for t in (before, during, after, late)]
        del before, during, after, late                # ours freed after uninstall()
        s = hpa.memory_stats()
        report(ok=ok, kinds=kinds, ours=ours, current=s["allocated_bytes.all.current"])
    """)
    assert r["ok"]
    assert r["kinds"] == [4, 2048, 4, 4]
    assert r["ours"] == [False, True, False, False]
    assert r["current"] == 0


def test_lazy_clone_and_clone_copy_the_data(pools, python):
    pools.ensure_free("2M", 32)
    r = python("""
        hpa.install()
        x = torch.arange(2 << 20, dtype=torch.float32)
        y = x.clone()
        z = torch._lazy_clone(x)                       # copy-on-write: materialised by the write below
        z[0] = -1.0
        report(clone=torch.equal(x, y), cow=bool(x[0] == 0 and z[0] == -1 and torch.equal(x[1:], z[1:])),
               on_huge=[kernel.page_size_kb(t.data_ptr()) for t in (y, z)])
    """)
    assert r.values == {"clone": True, "cow": True, "on_huge": [2048, 2048]}


# Note [Foreign pointers] (csrc/allocator.h): a pointer the deleter cannot give to the previous
# allocator stops the process with a message, instead of corrupting glibc's heap.
BAD_FREES = {
    "into_a_block": ("""
        t = torch.empty(4 << 20, dtype=torch.uint8)
        hpa_testing.delete_ptr(t.data_ptr() + (64 << 10))
    """, "inside the block"),
    "twice": ("""
        t = torch.empty(16 << 20, dtype=torch.uint8)
        keep = torch.empty(4 << 20, dtype=torch.uint8)     # keeps the segment mapped
        addr = t.data_ptr()
        del t
        hpa_testing.delete_ptr(addr)
    """, "in the free span"),
    "twice_while_its_thread_keeps_it": ("""
        t = torch.empty(4 << 20, dtype=torch.uint8)        # a size this thread keeps when freed
        addr = t.data_ptr()
        del t
        hpa_testing.delete_ptr(addr)
    """, "freed already and kept in a thread's cache"),
    "after_its_memory_went_back": ("""
        t = torch.empty(96 << 20, dtype=torch.uint8)       # a segment of its own
        addr = t.data_ptr()
        del t
        hpa.empty_cache()                                  # unmapped: nothing is there any more
        hpa_testing.delete_ptr(addr)
    """, "given back to the kernel"),
}


import pytest  # noqa: E402


@pytest.mark.parametrize("case", sorted(BAD_FREES))
def test_a_free_that_is_no_block_of_ours_stops_with_a_message_naming_it(pools, python, case):
    pools.ensure_free("2M", 64)
    code, words = BAD_FREES[case]
    r = python("""
        import hpa_testing
        hpa.install()
        print("before", flush=True)
    """ + code + """
        report(survived=True)
    """, check=False)
    assert r.returncode == -6, f"stopped with SIGABRT, not {r.returncode}: {r.stderr[-2000:]}"
    assert "survived" not in r.values
    line = next(ln for ln in r.stderr.splitlines() if "hugepage_allocator: fatal" in ln)
    assert words in line and "0x" in line, line
    assert "double free" not in r.stderr.replace("Likely a double free", ""), "glibc never saw it"


def test_pointers_of_the_previous_allocator_still_go_to_it(pools, python):
    """The check of Note [Foreign pointers] leaves real foreign pointers alone: tensors made before
    install(), many and of every size, free through the deleter into glibc."""
    pools.ensure_free("2M", 32)
    r = python("""
        from hugepage_allocator import _C
        before = [torch.empty(n, dtype=torch.uint8) for n in (1, 100, 70_000, 300_000, 5 << 20, 40 << 20)]
        hpa.install()
        churn = [torch.empty(64 << 20, dtype=torch.uint8) for _ in range(2)]
        del churn
        hpa.empty_cache()                                  # ranges given back: now retired
        ptrs = [t.data_ptr() for t in before]
        storages = [t.untyped_storage() for t in before]
        del before
        report(ours=[_C.block_size(p) for p in ptrs], n=len(storages))
        del storages                                       # freed through our deleter into glibc
        report(ok=True)
    """)
    assert r.values == {"ok": True}
