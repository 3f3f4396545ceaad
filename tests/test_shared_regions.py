"""Shared regions (csrc/shared_memory.h, hugepage_allocator/_shared.py), each behaviour in a fresh
interpreter: reuse, who may reuse a region, fallback when the kernel has no huge page, limits,
empty_cache(), settings, and a torch whose internals are not the ones expected. Judged from the
kernel: placement from smaps, file identity from /proc/self/maps, pages from sysfs.
"""
from __future__ import annotations

import pytest

NEW = """
import gc, os
MiB = 1 << 20
def new(nbytes):
    return torch.UntypedStorage._new_shared(nbytes)
def inode(s):
    return kernel.inode_of(s.data_ptr())
def stat(key):
    return hpa.memory_stats()[key]
"""


def test_a_region_is_reused_by_the_next_storage_of_its_size(pools, python):
    """A freed shared storage's region serves the next one of the same size: the same file, no new
    mapping, no page fault; one of another size gets a file of its own. Placement: 2 MiB pages."""
    pools.ensure_free("2M", 16)
    r = python(setup=NEW, code="""
        hpa.install()
        a = new(3 * MiB); a_ino = inode(a); page = kernel.page_size_kb(a.data_ptr())
        a[0] = 7
        del a
        f0 = minflt()
        b = new(3 * MiB); b[0] = 1; b[3 * MiB - 1] = 1
        faults = minflt() - f0
        c = new(5 * MiB)
        report(page=page, same=inode(b) == a_ino, other=inode(c) != a_ino, faults=faults,
               maps=stat("num_shared_maps"), reuses=stat("num_shared_reuses"),
               in_use=stat("shared_bytes.hugetlb_2M.current"))
    """)
    assert r["page"] == 2048 and r["same"] and r["other"]
    assert r["faults"] <= 2, r["faults"]
    assert (r["maps"], r["reuses"]) == (2, 1)
    assert r["in_use"] == (4 + 6) << 20  # 3 MiB + control -> 2 pages; 5 MiB -> 3 pages


def test_a_region_another_process_holds_is_not_reused(pools, python):
    """A storage sent to a forked child (a torch.multiprocessing Queue) and freed by the parent
    while the child still holds it: the parent's next storage of that size must not take the region
    (it would overwrite what the child reads); once the child has dropped it, it is reused."""
    pools.ensure_free("2M", 32)
    r = python(setup=NEW, code="""
        import torch.multiprocessing as mp
        torch.set_num_threads(1)
        def child(inbox, outbox):
            t = inbox.get()
            outbox.put(float(t[0]))
            inbox.get()              # holds t until told
            del t
            outbox.put("dropped")
            inbox.get()
        hpa.install()
        ctx = mp.get_context("fork")
        inbox, outbox = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=child, args=(inbox, outbox)); p.start()
        t = torch.full((1 << 20,), 5.0); t.share_memory_()
        first = inode(t.untyped_storage())
        inbox.put(t)
        seen = outbox.get()
        del t
        u = new(4 * MiB)             # the child still holds the first region
        while_held = inode(u)
        u[0] = 9
        del u
        inbox.put(None); assert outbox.get() == "dropped"
        v, w = new(4 * MiB), new(4 * MiB)   # both idle regions, the child's one included
        after = {inode(v), inode(w)}
        inbox.put(None); p.join()
        report(seen=seen, while_held_differs=while_held != first, reused_after=after == {first, while_held},
               exitcode=p.exitcode)
    """)
    assert r["seen"] == 5.0 and r["exitcode"] == 0
    assert r["while_held_differs"], "a region a child still held was handed out again"
    assert r["reused_after"]


def test_a_forked_child_never_takes_its_parents_idle_regions(pools, python):
    """A region idle in the parent at fork() stays the parent's: the child's storage of the same size
    is a new file, and the parent's next one reuses its own region, whose bytes the child did not
    touch."""
    pools.ensure_free("2M", 32)
    r = python(setup=NEW, code="""
        torch.set_num_threads(1)
        hpa.install()
        a = new(4 * MiB); parent_ino = inode(a); a[0] = 42; del a
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            b = new(4 * MiB); b[0] = 99
            os.write(wfd, str(inode(b)).encode()); os._exit(0)
        child_ino = int(os.read(rfd, 64)); os.waitpid(pid, 0)
        c = new(4 * MiB)
        report(child_new_file=child_ino != parent_ino, parent_reused=inode(c) == parent_ino, byte=c[0])
    """)
    assert r["child_new_file"] and r["parent_reused"] and r["byte"] == 42


def test_without_free_huge_pages_shared_memory_falls_back_to_ordinary_pages(pools, python):
    """The kernel's 2 MiB pool empty: a shared storage still comes, on an ordinary memfd, counted as
    a fallback; its data is right; no SIGBUS (the child process lives to report)."""
    pools.set_free("2M", 0)
    r = python(setup=NEW, code="""
        hpa.install()
        s = new(4 * MiB)
        t = torch.empty(0, dtype=torch.uint8).set_(s).view(torch.float32)
        t.fill_(3.0)
        report(page=kernel.page_size_kb(s.data_ptr()), total=float(t.sum()), shared=s.is_shared(),
               fallbacks=stat("num_shared_fallbacks"),
               other=stat("shared_bytes.thp.current") + stat("shared_bytes.base.current"))
    """)
    assert r["page"] == 4 and r["total"] == 3.0 * (1 << 20) and r["shared"]
    assert r["fallbacks"] == 1 and r["other"] >= 4 << 20


def test_small_storages_go_on_ordinary_pages(pools, python):
    """Below 1 MiB a region of huge pages would be mostly empty: such storages get ordinary pages
    (and are reused all the same)."""
    pools.ensure_free("2M", 8)
    r = python(setup=NEW, code="""
        hpa.install()
        s = new(300 * 1024); page = kernel.page_size_kb(s.data_ptr()); ino = inode(s); del s
        t = new(300 * 1024)
        report(page=page, reused=inode(t) == ino, base=stat("shared_bytes.base.current"))
    """)
    assert r["page"] == 4 and r["reused"] and r["base"] == 76 * 4096  # 300 KiB + the control block, in 4 KiB pages


def test_empty_cache_and_max_shared_cached_unmap_idle_regions(pools, python):
    """empty_cache() unmaps every idle region (the pages go back to the kernel), and
    max_shared_cached:0 keeps none idle in the first place."""
    pools.ensure_free("2M", 16)
    r = python(setup=NEW, code="""
        hpa.install()
        s = new(6 * MiB); del s
        idle = kernel.shared_files()
        free_idle = kernel.pool("2M", "free_hugepages")
        released = hpa.empty_cache()
        free_after = kernel.pool("2M", "free_hugepages")
        hpa.install(max_shared_cached=0)
        s = new(6 * MiB); del s
        report(idle_mapped=len(idle.mapped), released=released, back=free_after - free_idle,
               after_empty=len(kernel.shared_files().mapped), idle_regions=stat("shared_idle_regions"))
    """)
    assert r["idle_mapped"] == 1 and r["released"] >= 8 << 20 and r["back"] >= 4
    assert r["after_empty"] == 0 and r["idle_regions"] == 0


def test_shared_memory_follows_the_setting_and_uninstall(pools, python):
    """shared_memory:false, and uninstall(), leave new shared storages to PyTorch (/dev/shm);
    install() with it on brings them back. Storages already on regions stay recognised."""
    pools.ensure_free("2M", 16)
    r = python(setup=NEW, code="""
        def where(s):
            return "region" if kernel.inode_of(s.data_ptr()) in kernel.shared_files().mapped else "pytorch"
        hpa.install(shared_memory=False); off = new(2 * MiB)
        hpa.install(); on = new(2 * MiB)
        hpa.uninstall(); after = new(2 * MiB)
        report(off=where(off), on=where(on), after=where(after), on_shared=on.is_shared(), off_shared=off.is_shared())
    """)
    assert (r["off"], r["on"], r["after"]) == ("pytorch", "region", "pytorch")
    assert r["on_shared"] and r["off_shared"]


@pytest.mark.parametrize("value", ["maybe", "2", "[true]"])
def test_a_bad_shared_memory_value_names_the_setting(python, value):
    r = python(setup=NEW, code=f"""
        try:
            hpa.install(config="shared_memory:{value}")
        except hpa.ConfigError as e:
            report(error=str(e))
    """)
    assert "'shared_memory'" in r["error"] and "true or false" in r["error"], r["error"]


def test_an_unexpected_torch_internal_leaves_pytorch_in_charge_with_a_warning(pools, python):
    """If torch's _new_shared is not the function this was written against, install() warns once,
    names it, and shared memory stays PyTorch's own; the allocator itself is installed."""
    pools.ensure_free("2M", 8)
    r = python(setup=NEW, code="""
        import warnings
        original = torch.UntypedStorage._new_shared
        torch.UntypedStorage._new_shared = classmethod(lambda cls, size, device="cpu", pin=False:
                                                       original.__func__(cls, size, device=device))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hpa.install()
        s = new(2 * MiB)
        report(warnings=[str(w.message) for w in caught], installed=hpa.is_installed(),
               region=inode(s) in kernel.shared_files().mapped)
    """)
    assert r["installed"] and not r["region"]
    assert len(r["warnings"]) == 1 and "_new_shared" in r["warnings"][0] and "PyTorch's own path" in r["warnings"][0]


def test_a_dry_pool_is_not_asked_for_every_region(pools, python):
    """With no free 2 MiB page, shared storages fall back; after a refusal the kernel is asked again
    only after 1, 2, 4, ... creations, not for every batch; empty_cache() ends the back-off."""
    pools.set_free("2M", 0)
    r = python(setup=NEW, code="""
        hpa.install()
        held = [new(4 * MiB) for _ in range(10)]   # all alive: no region to reuse
        refused = stat("num_shared_map_failures")
        hpa.empty_cache()
        held.append(new(4 * MiB))
        report(refused=refused, after=stat("num_shared_map_failures"), fallbacks=stat("num_shared_fallbacks"))
    """)
    assert r["refused"] == 3, r.values  # asked at the 1st, 3rd and 6th creation
    assert r["after"] == 4 and r["fallbacks"] == 11
