"""Threads share the pool safely; fork() while other threads allocate leaves no lock held in the
child; a forked child never writes to memory it shares with its parent; DataLoader workers forked
from an installed process deliver correct batches."""


def test_eight_threads_allocating_and_freeing_mixed_sizes_keep_data_and_stats_exact(pools, python):
    """1 KiB to 16 MiB, handed between threads so that frees also happen on other threads than the
    allocation; every tensor is checked whole when it is freed (a block handed out twice, or
    overlapping another, shows up as a wrong byte)."""
    pools.ensure_free("2M", 200)
    r = python("""
        import math, queue, random, threading
        torch.set_num_threads(1)
        hpa.install()
        start = hpa.memory_stats()["allocated_bytes.all.current"]
        shared = queue.Queue()
        errors, checked = [], [0] * 8
        def check(t, v, who):
            if not bool((t == v).all()):
                errors.append((who, t.numel(), v))
            checked[who] += 1
        def work(seed):
            rng = random.Random(seed)
            live = []
            for i in range(300):
                n = int(math.exp(rng.uniform(math.log(1 << 10), math.log(16 << 20))))
                v = (seed * 31 + i) % 251
                t = torch.empty(n, dtype=torch.uint8)
                t.fill_(v)
                (shared.put if rng.random() < 0.25 else live.append)((t, v))
                del t
                while len(live) > 6:
                    check(*live.pop(rng.randrange(len(live))), seed)
                try:
                    while rng.random() < 0.5:
                        check(*shared.get_nowait(), seed)   # allocated by another thread
                except queue.Empty:
                    pass
            for item in live:
                check(*item, seed)
        threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        while not shared.empty():
            check(*shared.get(), 0)
        s = hpa.memory_stats()
        report(errors=errors[:5], checked=sum(checked), delta=s["allocated_bytes.all.current"] - start,
               hugetlb=s["num_allocs.hugetlb_2M"])
    """, timeout=300)
    assert r["errors"] == []
    assert r["checked"] == 8 * 300
    assert r["delta"] == 0, "allocated_bytes.all.current is back to its starting value"
    assert r["hugetlb"] > 0


FORK_CHURN = """
    import signal, threading
    torch.set_num_threads(1)   # libgomp's thread pool does not survive fork(): a torch limit
    hpa.install()
    stop = threading.Event()
    from hpa_testing import time_alloc_free
    def churn(seed):
        i = 0
        while not stop.is_set():
            i += 1
            big = torch.empty((1 + (i + seed) % 7) << 20, dtype=torch.uint8)
            small = [torch.empty(64 << (j % 12), dtype=torch.uint8) for j in range(8)]
            big.fill_(1)
            del big, small
            # Allocations without the GIL, so that the fork lands inside the allocator's locks.
            time_alloc_free((3 << 20) if i % 2 else (200 << 10), 1, 500)
    workers = [threading.Thread(target=churn, args=(0,))]
    for w in workers: w.start()
"""


def test_forty_forks_while_other_threads_allocate_give_every_child_a_working_allocator(pools, python):
    """A pool lock inherited held would hang the child; a child not done within 30 s is killed
    and counted as hung (so that a broken build leaves no process behind)."""
    pools.ensure_free("2M", 128)
    r = python(setup=FORK_CHURN, code="""
        import time
        def wait(pid, seconds=30):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return status
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"
        statuses = []
        for k in range(40):
            pid = os.fork()
            if pid == 0:
                ok = True
                for n in (100, 5000, 200 << 10, 4 << 20, 34 << 20):
                    t = torch.empty(n, dtype=torch.uint8)
                    t.fill_(5)
                    ok = ok and int(t[0]) == 5 and int(t[-1]) == 5
                os._exit(0 if ok else 1)
            statuses.append(wait(pid))
        stop.set()
        for w in workers: w.join()
        report(statuses=statuses)
    """, timeout=240)
    assert r["statuses"] == [0] * 40


def test_a_forked_child_never_writes_to_memory_it_shares_with_its_parent(pools, python):
    """Reusing the parent's cached hugetlb memory would copy pages on write; with no free huge page
    for the copy the kernel kills the child with SIGBUS. The child must map its own or fall back."""
    pools.ensure_free("2M", 64)
    r = python("""
        torch.set_num_threads(1)   # libgomp's thread pool does not survive fork(): a torch limit
        hpa.install()
        cached = torch.empty(64 << 20, dtype=torch.uint8)
        cached.fill_(1)
        small = [torch.empty(1000, dtype=torch.uint8) for _ in range(100)]
        addr = cached.data_ptr()
        del cached, small                             # all cached in the parent's pool
        with open("/proc/sys/vm/nr_hugepages") as f:
            nr = int(f.read())
        free = kernel.pool("2M", "free_hugepages")
        kernel.set_pool("2M", max(0, nr - free))      # not one huge page left for a copy
        pid = os.fork()
        if pid == 0:
            t = torch.empty(64 << 20, dtype=torch.uint8)
            t.fill_(7)
            s = [torch.full((1000,), 3, dtype=torch.uint8) for _ in range(100)]
            ok = int(t[-1]) == 7 and all(int(x[0]) == 3 for x in s) and t.data_ptr() != addr
            os._exit(0 if ok else 1)
        status = os.waitpid(pid, 0)[1]
        kernel.set_pool("2M", nr)
        again = torch.empty(64 << 20, dtype=torch.uint8)   # the parent still reuses its cache
        report(status=status, signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
               reused=again.data_ptr() == addr)
    """, timeout=120)
    assert r["signal"] == 0, f"the child died of signal {r['signal']}"
    assert r["status"] == 0 and r["reused"]


def test_dataloader_with_forked_workers_delivers_correct_batches(pools, python):
    """Workers read a dataset that lives on the parent's huge pages and allocate their own samples;
    the parent allocates between batches. Two epochs, so workers are forked twice."""
    pools.ensure_free("2M", 128)
    r = python("""
        from torch.utils.data import DataLoader, Dataset
        torch.set_num_threads(1)   # libgomp's thread pool does not survive fork(): a torch limit
        hpa.install()
        base = torch.arange(256 * 4096, dtype=torch.float32).reshape(256, 4096)   # 4 MiB, ours
        class Rows(Dataset):
            def __len__(self):
                return 256
            def __getitem__(self, i):
                row = base[i].clone() * 2          # allocated in the worker
                scratch = torch.empty(3 << 20, dtype=torch.uint8)
                scratch.fill_(i % 251)
                return row, int(scratch[-1])
        loader = DataLoader(Rows(), batch_size=16, shuffle=True, num_workers=2,
                            multiprocessing_context="fork", generator=torch.Generator().manual_seed(0))
        bad, batches = 0, 0
        for epoch in range(2):
            for rows, marks in loader:
                idx = (rows[:, 0] / 2 / 4096).long()
                bad += int(not torch.equal(rows, base[idx] * 2)) + int(not torch.equal(marks, idx % 251))
                batches += 1
                step = torch.empty(8 << 20, dtype=torch.uint8)   # the parent keeps allocating
                step.fill_(1)
        report(bad=bad, batches=batches, base_kps=kernel.page_size_kb(base.data_ptr()))
    """, timeout=300)
    assert r["base_kps"] == 2048
    assert r["batches"] == 32 and r["bad"] == 0
