"""Client: shared memory between processes, as PyTorch's DataLoader and torch.multiprocessing make
it, on the default allocator and on this one in the same test (Note [Shared memory],
csrc/shared_memory.h).

Under the allocator, what workers collate and what is sent through queues lands on the
allocator's shared regions (memfd files of 2 MiB pages, reused batch after batch); under the
default, in /dev/shm on 4 KiB pages. Judged from the kernel: placement from /proc/self/smaps, the
pages from /sys/kernel/mm/hugepages (free pages plus the pages the main process's own pool holds
are the same before and after a loader), and what each process still maps or holds open from
/proc/self/maps and /proc/self/fd. Batches are compared with the default's, bit for bit.
"""
from __future__ import annotations

LOADER = """
import gc, hashlib, signal
from torch.utils.data import DataLoader, Dataset, get_worker_info


class Images(Dataset):
    \"\"\"3x128x128 float32 images (192 KiB; a batch of 16 is 3 MiB), made in the worker.\"\"\"
    def __init__(self, n, kill_at=None):
        self.n, self.kill_at = n, kill_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        info = get_worker_info()
        if self.kill_at is not None and info is not None and info.id == 0 and i >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # a worker killed mid-epoch (the OOM killer)
        return torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(i)), i


def minflt():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def pages_held():
    \"\"\"2 MiB pages free in the kernel plus those this process's own pool holds: constant while
    nothing else takes or gives pages, whatever the pool caches.\"\"\"
    pool = hpa.memory_stats()["reserved_bytes.hugetlb_2M.current"] >> 21 if hpa.is_installed() else 0
    return kernel.pool("2M", "free_hugepages") + pool


def leftovers():
    files = kernel.shared_files()
    return {"mapped": len(files.mapped), "fds": files.open_fds}


def load(context, batches, workers=2, persistent=False, epochs=1, warm=6):
    \"\"\"Digests and placement of every batch, and the page faults the main process takes when it
    reads a batch, per batch after the first `warm` (those map the regions the loader keeps
    reusing). Only the read is counted: after fork() the parent also faults on its own pages as
    it writes them (copy-on-write), whatever the allocator.\"\"\"
    loader = DataLoader(Images(16 * batches), batch_size=16, num_workers=workers,
                        multiprocessing_context=context, persistent_workers=persistent)
    digests, places, faults, seen = [], set(), 0, 0
    for epoch in range(epochs):
        for x, y in loader:
            f0 = minflt()
            x.sum()           # the training step reads the batch
            if seen >= warm:
                faults += minflt() - f0
            digests.append(digest((x, y)))
            places.add(where(x))
            seen += 1
    del x, y
    return loader, {"digests": digests, "where": sorted(places), "faults_per_batch": faults / (seen - warm)}
"""


def test_worker_batches_land_on_huge_pages_under_every_start_method(pools, twin):
    """Forked, spawned and forkserver workers collate 3 MiB batches of images; the environment switch
    installs the allocator in every process. Proves, for each start method: batches equal to the
    default's; in the main process every batch on 2 MiB pages (the default's in /dev/shm); the page
    faults of reading a batch in the main process at most a tenth of the default's (the regions come
    back mapped); after the loader ends, every huge page is back and the main process maps and holds
    none of the allocator's shared files."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(LOADER, """
        if __name__ == "__main__":
            torch.set_num_threads(1)   # libgomp's pool does not survive fork(): see the other tests
            out = {}
            for context in ("fork", "spawn", "forkserver"):
                before = pages_held()
                loader, out[context] = load(context, batches=24)
                del loader
                gc.collect()
                out[context].update(pages_back=pages_held() == before, **leftovers())
            report(**out)
    """, timeout=300)
    for context in ("fork", "spawn", "forkserver"):
        mine, theirs = ours[context], default[context]
        assert len(mine["digests"]) == 24 and mine["digests"] == theirs["digests"], context
        assert mine["where"] == ["2M"] and theirs["where"] == ["shm"], (context, mine["where"], theirs["where"])
        assert mine["faults_per_batch"] * 10 <= theirs["faults_per_batch"], (context, mine["faults_per_batch"],
                                                                               theirs["faults_per_batch"])
        assert mine["pages_back"], context
        assert (mine["mapped"], mine["fds"]) == (0, 0), (context, mine)


def test_a_thousand_batches_leak_no_pages_mappings_or_descriptors(pools, twin):
    """1000 batches from two forked workers. Proves: every batch equal to the default's; every 100
    batches, the main process maps at most a few regions and holds as many descriptors (the regions
    are reused, not piling up), and the huge pages taken stay level; at the end, all are back."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(LOADER, """
        class Small(Dataset):
            def __len__(self):
                return 4000
            def __getitem__(self, i):
                return torch.full((256, 1024), float(i))   # 1 MiB; a batch of 4 is 4 MiB

        if __name__ == "__main__":
            torch.set_num_threads(1)
            before = pages_held()
            h, samples = hashlib.sha256(), []
            loader = DataLoader(Small(), batch_size=4, num_workers=2, multiprocessing_context="fork")
            for k, b in enumerate(loader):
                h.update(b.numpy().tobytes())
                if k % 100 == 99:
                    samples.append(dict(leftovers(), held=before - pages_held(), where=where(b)))
            n = k + 1
            del b, loader
            gc.collect()
            report(n=n, digest=h.hexdigest(), samples=samples, pages_back=pages_held() == before, end=leftovers())
    """, timeout=300)
    assert ours["n"] == default["n"] == 1000 and ours["digest"] == default["digest"]
    assert {s["where"] for s in ours["samples"]} == {"2M"}
    assert {s["where"] for s in default["samples"]} == {"shm"}
    for s in ours["samples"]:
        assert 1 <= s["mapped"] <= 12 and s["fds"] <= s["mapped"] + 2, ours["samples"]
    assert max(s["held"] for s in ours["samples"]) <= 2 * 12 * 3, ours["samples"]  # 2 workers' regions
    assert ours["samples"][-1]["held"] <= ours["samples"][1]["held"] + 6, ours["samples"]
    assert ours["pages_back"] and ours["end"] == {"mapped": 0, "fds": 0}, ours


def test_a_worker_killed_mid_epoch_leaks_no_pages_or_descriptors(pools, twin):
    """Worker 0 is killed (SIGKILL) part way through an epoch, with batches of both workers in flight
    and held. Proves: the loader fails under both allocators (PyTorch's RuntimeError naming the
    worker, "killed by signal" or "exited unexpectedly", or, when a batch of the dead worker was
    already queued, the EOFError or ConnectionError of fetching its file descriptor from that
    worker: any of them, by timing, with PyTorch's own shared memory too), and once the main
    process drops what it got, every huge page is back and it maps and holds none of the
    allocator's shared files."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(LOADER, """
        if __name__ == "__main__":
            torch.set_num_threads(1)
            before = pages_held()
            held, error = [], None
            loader = DataLoader(Images(16 * 40, kill_at=16 * 6), batch_size=16, num_workers=2,
                                multiprocessing_context="fork")
            try:
                for x, y in loader:
                    held.append(x)
            except (RuntimeError, EOFError, ConnectionError) as e:
                error = f"{type(e).__name__}: {e}"
            got = len(held)
            places = sorted({where(t) for t in held})
            del held, loader
            x = y = None
            gc.collect()
            report(error=error, got=got, places=places, pages_back=pages_held() == before, end=leftovers())
    """, timeout=240)
    for run in (default, ours):
        assert run["error"] is not None and run["got"] >= 1, run.values
        assert run["error"].split(":")[0] in ("EOFError", "ConnectionResetError", "ConnectionRefusedError") \
            or "DataLoader worker (pid" in run["error"], run["error"]
    assert ours["places"] == ["2M"] and default["places"] == ["shm"]
    assert ours["pages_back"] and ours["end"] == {"mapped": 0, "fds": 0}, ours


def test_persistent_workers_give_their_pages_back_when_the_loader_goes(pools, twin):
    """Persistent forked workers over three epochs keep reusing their regions; the pages come back
    when the loader is deleted. Proves: batches equal to the default's, on 2 MiB pages; while the
    loader lives the regions are few; after `del loader` every huge page is back and nothing of
    the allocator's shared memory is mapped or open."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(LOADER, """
        if __name__ == "__main__":
            torch.set_num_threads(1)
            before = pages_held()
            loader, run = load("fork", batches=10, persistent=True, epochs=3)
            run["alive"] = leftovers()
            del loader
            gc.collect()
            run.update(pages_back=pages_held() == before, end=leftovers())
            report(**run)
    """, timeout=240)
    assert len(ours["digests"]) == 30 and ours["digests"] == default["digests"]
    assert ours["where"] == ["2M"] and default["where"] == ["shm"]
    assert ours["alive"]["mapped"] <= 12, ours["alive"]
    assert ours["pages_back"] and ours["end"] == {"mapped": 0, "fds": 0}, ours


def test_the_shared_memory_setting_off_leaves_batches_to_pytorch(pools, twin):
    """shared_memory:false: samples still on 2 MiB pages in the workers, batches in PyTorch's own
    /dev/shm, equal to the default's."""
    pools.ensure_free("2M", 128)
    code = """
        if __name__ == "__main__":
            torch.set_num_threads(1)
            loader, run = load("fork", batches=8, warm=2)
            report(**run)
    """
    default = twin.run(LOADER, code, allocator="default")
    ours = twin.run(LOADER, code, allocator="hugepage", env={"HUGEPAGE_ALLOCATOR_CONF": "shared_memory:false"})
    assert ours["installed"] and ours["digests"] == default["digests"]
    assert ours["where"] == default["where"] == ["shm"]


ROUND_TRIP = """
import torch.multiprocessing as mp


def child(inbox, outbox):
    a, b = inbox.get(), inbox.get()
    same = a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    a.add_(1)                       # seen by the parent: the memory is shared
    outbox.put((same, where(a), a))
    inbox.get()                     # the parent is done with what it got back


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = {}
    for method in ("fork", "spawn"):
        ctx = mp.get_context(method)
        t = torch.zeros(1 << 20)    # 4 MiB
        t.share_memory_()
        inbox, outbox = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=child, args=(inbox, outbox))
        p.start()
        inbox.put(t)
        inbox.put(t)                # the same tensor in a second message
        same, child_where, back = outbox.get()
        out[method] = {"same_in_child": same, "child_where": child_where, "where": where(t),
                       "back_is_original": back.untyped_storage().data_ptr() == t.untyped_storage().data_ptr(),
                       "seen": float(t[0]), "shared": t.is_shared()}
        del back
        inbox.put(None)
        p.join()
        out[method]["exitcode"] = p.exitcode
    report(**out)
"""


def test_a_tensor_sent_twice_and_back_stays_one_storage(pools, twin):
    """share_memory_() and then the same tensor in two Queue messages to a child, which writes to it
    and sends it back, under fork and spawn. Proves the semantics PyTorch's own shared memory has,
    with the default's results: the child gets one storage for both messages, the parent sees the
    child's write, and what comes back is the parent's own storage; on 2 MiB pages in both
    processes (the default: /dev/shm), and is_shared() true."""
    pools.ensure_free("2M", 64)
    default, ours = twin.both(ROUND_TRIP, timeout=180)
    for method in ("fork", "spawn"):
        mine, theirs = ours[method], default[method]
        for key in ("same_in_child", "back_is_original", "seen", "shared", "exitcode"):
            assert mine[key] == theirs[key], (method, key, mine, theirs)
        assert mine["same_in_child"] and mine["back_is_original"] and mine["seen"] == 1.0 and mine["shared"]
        assert (mine["where"], mine["child_where"]) == ("2M", "2M"), mine
        assert (theirs["where"], theirs["child_where"]) == ("shm", "shm"), theirs


def test_two_loaders_at_once_with_pinned_batches(pools, twin):
    """Two DataLoaders iterated together (a training set and a validation set, say), two forked
    workers each, one with pin_memory=True (this CPU-only torch ignores it with a warning). Proves:
    both loaders' batches equal to the default's and on 2 MiB pages, the regions of four workers
    kept apart (no batch overwritten by another worker's), and every page back at the end."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(LOADER, """
        import warnings
        if __name__ == "__main__":
            torch.set_num_threads(1)
            warnings.simplefilter("ignore")
            before = pages_held()
            a = DataLoader(Images(16 * 12), batch_size=16, num_workers=2, multiprocessing_context="fork")
            b = DataLoader(Images(16 * 12), batch_size=16, num_workers=2, multiprocessing_context="fork",
                           pin_memory=True, shuffle=True, generator=torch.Generator().manual_seed(3))
            digests, places, kept = [], set(), []
            for (xa, ya), (xb, yb) in zip(a, b):
                digests.append([digest((xa, ya)), digest((xb, yb))])
                places.update((where(xa), where(xb)))
                kept.append((xa, xb, digest(xa), digest(xb)))   # held while later batches arrive
            intact = all(digest(xa) == da and digest(xb) == db for xa, xb, da, db in kept)
            del a, b, xa, ya, xb, yb, kept
            gc.collect()
            report(digests=digests, where=sorted(places), intact=intact, pages_back=pages_held() == before,
                   end=leftovers())
    """, timeout=240)
    assert len(ours["digests"]) == 12 and ours["digests"] == default["digests"]
    assert ours["where"] == ["2M"] and default["where"] == ["shm"]
    assert ours["intact"] and default["intact"]
    assert ours["pages_back"] and ours["end"] == {"mapped": 0, "fds": 0}, ours
