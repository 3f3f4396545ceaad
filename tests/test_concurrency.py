"""Threads share the pool safely; a fork() while another thread allocates leaves no lock held in the child."""


def test_threads_allocating_and_freeing_at_once_keep_data_and_stats_exact(pools, python):
    pools.ensure_free("2M", 200)
    r = python("""
        import threading
        hpa.install()
        start = hpa.memory_stats()["allocated_bytes.all.current"]
        errors = []
        def work(seed):
            g = torch.Generator().manual_seed(seed)
            live = []
            for i in range(300):
                n = int(torch.randint(1, 12, (1,), generator=g)) << 20
                t = torch.empty(n, dtype=torch.uint8)
                t.fill_((seed * 31 + i) % 251)
                live.append((t, (seed * 31 + i) % 251))
                if len(live) > 4:
                    t, v = live.pop(0)
                    if not bool((t == v).all()):
                        errors.append(seed)
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        report(errors=errors, delta=hpa.memory_stats()["allocated_bytes.all.current"] - start)
    """)
    assert r["errors"] == []
    assert r["delta"] == 0


def test_fork_while_another_thread_allocates_gives_children_a_working_allocator(pools, python):
    pools.ensure_free("2M", 128)
    r = python("""
        import threading
        hpa.install()
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                t = torch.empty(6 << 20, dtype=torch.uint8)
                t.fill_(1)
                del t
        worker = threading.Thread(target=churn)
        worker.start()
        statuses = []
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                t = torch.empty(4 << 20, dtype=torch.uint8)   # deadlocks if a pool lock was inherited held
                t.fill_(5)
                os._exit(0 if int(t[-1]) == 5 else 1)
            statuses.append(os.waitpid(pid, 0)[1])
        stop.set()
        worker.join()
        report(statuses=statuses)
    """, timeout=120)
    assert r["statuses"] == [0] * 20


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
        kernel.set_pool("2M", nr - free)              # not one huge page left for a copy
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
