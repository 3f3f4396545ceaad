"""Under a hugetlb cgroup limit (what containers set), a process that wants far more huge pages than
the limit allows lives on with correct data: no SIGBUS. Both hierarchies (cgroup v2 `hugetlb.2MB.max`,
cgroup v1 `hugetlb.2MB.limit_in_bytes`, the v1 one mounted for the test) and both kinds of limit: the
one charged when a page is faulted in, and the one charged when mmap reserves (`...rsvd...`)."""
import os
import signal
import subprocess
import tempfile
import time

import pytest

LIMIT = 8 << 20

# (hierarchy, limit file): the fault-time limit and the reservation-time one, in each hierarchy.
LIMITS = {
    "v2-fault": ("v2", "hugetlb.2MB.max"),
    "v2-rsvd": ("v2", "hugetlb.2MB.rsvd.max"),
    "v1-fault": ("v1", "hugetlb.2MB.limit_in_bytes"),
    "v1-rsvd": ("v1", "hugetlb.2MB.rsvd.limit_in_bytes"),
}


def _cgroup2_root():
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


def _retry(action, what, seconds=60):
    """The hugetlb controller lives in one hierarchy at a time, and other processes on the machine
    may be using it in the other one for a moment: wait for it rather than fail."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except OSError as e:
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: {e}")
            time.sleep(0.5)


def _v2_group(name):
    root = _cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy is mounted"
    with open(os.path.join(root, "cgroup.controllers")) as f:
        assert "hugetlb" in f.read().split(), "the hugetlb controller is not in the cgroup v2 root"
    control = os.path.join(root, "cgroup.subtree_control")
    with open(control) as f:
        was_enabled = "hugetlb" in f.read().split()

    def enable():
        with open(control, "w") as f:
            f.write("+hugetlb")

    _retry(enable, "enabling the hugetlb controller in cgroup v2")
    path = os.path.join(root, name)
    os.mkdir(path)

    def cleanup():
        os.rmdir(path)
        if not was_enabled:
            try:
                with open(control, "w") as f:
                    f.write("-hugetlb")
            except OSError:
                pass  # another cgroup uses it now: leave it on

    return path, cleanup


def _hugetlb_hierarchy_id():
    """The id of the v1 hierarchy holding the hugetlb controller; 0 when it is with cgroup v2."""
    with open("/proc/cgroups") as f:
        for line in f:
            fields = line.split()
            if fields[0] == "hugetlb":
                return int(fields[1])
    return 0


def _v1_group(name):
    mountpoint = tempfile.mkdtemp(prefix="hugepage-allocator-hugetlb-v1-")

    def mount():
        proc = subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "hugetlb", mountpoint],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(proc.returncode, proc.stderr.strip())

    _retry(mount, "mounting a cgroup v1 hugetlb hierarchy")
    path = os.path.join(mountpoint, name)
    os.mkdir(path)

    def cleanup():
        os.rmdir(path)
        # A v1 hierarchy unmounted while its removed child is still being torn down lingers, and
        # keeps the controller away from cgroup v2; mounted and unmounted again once the child is
        # gone, it goes, and the controller returns to v2.
        for _ in range(50):
            subprocess.run(["umount", mountpoint], check=True)
            time.sleep(0.2)
            if _hugetlb_hierarchy_id() == 0:
                break
            mount()
        os.rmdir(mountpoint)

    return path, cleanup


def _limited_group(pools, kind):
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    hierarchy, limit_file = LIMITS[kind]
    name = f"hugepage-allocator-test-{os.getpid()}"
    path, cleanup = (_v2_group if hierarchy == "v2" else _v1_group)(name)
    try:
        with open(os.path.join(path, limit_file), "w") as f:
            f.write(str(LIMIT))
        pools.ensure_free("2M", 64)  # the kernel's pool has plenty: only the cgroup says no
        yield path, kind
    finally:
        cleanup()


@pytest.fixture(params=list(LIMITS))
def hugetlb_cgroup(request, pools):
    """A cgroup whose 2 MiB hugetlb use is capped at 8 MiB by one kind of limit; removed afterwards."""
    yield from _limited_group(pools, request.param)


@pytest.fixture
def v2_fault_cgroup(pools):
    yield from _limited_group(pools, "v2-fault")


JOIN = "open(os.path.join({cg!r}, 'cgroup.procs'), 'w').write(str(os.getpid()))\n"


def test_a_plain_hugetlb_mapping_beyond_the_limit_dies_or_is_refused(hugetlb_cgroup, python):
    """The control: what the allocator must survive really happens under this limit. The fault-time
    limit kills a plain first touch with SIGBUS; the reservation-time one refuses the mmap."""
    path, kind = hugetlb_cgroup
    r = python(setup=JOIN.format(cg=path), code="""
        import mmap
        try:
            m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)  # MAP_HUGETLB
        except OSError as e:
            report(refused=e.errno)
            raise SystemExit(0)
        for offset in range(0, 64 << 20, 2 << 20):
            m[offset] = 1
        report(survived=True)
    """, check=False)
    if kind.endswith("rsvd"):
        assert r.returncode == 0 and r["refused"] == 12, (r.stdout, r.stderr)  # ENOMEM
    else:
        assert r.returncode == -signal.SIGBUS


def test_allocations_beyond_the_limit_fall_back_and_keep_their_data(hugetlb_cgroup, python):
    path, kind = hugetlb_cgroup
    r = python(setup=JOIN.format(cg=path), code="""
        hpa.install()
        inside = torch.empty(6 << 20, dtype=torch.uint8)       # within the 8 MiB limit
        inside.fill_(1)
        beyond = [torch.full((16 << 20,), i, dtype=torch.uint8) for i in range(2, 6)]
        small = [torch.full((3000,), i % 251, dtype=torch.uint8) for i in range(3000)]   # 9 MiB of slabs
        ok = bool((inside == 1).all()) and all(bool((t == i + 2).all()) for i, t in enumerate(beyond))
        ok = ok and all(int(t[0]) == i % 251 and int(t[-1]) == i % 251 for i, t in enumerate(small))
        report(ok=ok, inside=kernel.page_size_kb(inside.data_ptr()),
               beyond=[kernel.page_size_kb(t.data_ptr()) for t in beyond],
               fallbacks=hpa.memory_stats()["num_fallbacks.thp"])
    """)
    assert r["ok"]
    assert r["inside"] == 2048
    assert r["beyond"] == [4, 4, 4, 4]
    assert r["fallbacks"] >= 4


def test_doctor_shows_the_hugetlb_limit_of_its_cgroup(v2_fault_cgroup, python):
    path, _ = v2_fault_cgroup
    r = python(setup=JOIN.format(cg=path), code="""
        from hugepage_allocator import _doctor
        report(text=_doctor.report(1 << 30))
    """)
    assert "2 MiB: 8 MiB" in r["text"], r["text"]


def test_shared_memory_beyond_the_limit_falls_back_and_keeps_its_data(hugetlb_cgroup, python):
    """Shared storages (what DataLoader workers collate into, share_memory_()) past the limit land
    on ordinary shared memory, with their data, and a forked child that reads and writes them
    lives: the limit is met where the regions are faulted in or reserved, never at a touch."""
    path, kind = hugetlb_cgroup
    r = python(setup=JOIN.format(cg=path), timeout=120, code="""
        # libgomp's thread pool does not survive fork(): a forked child that runs a parallel op
        # after the parent ran one hangs, with any allocator. One thread in the parent avoids it.
        torch.set_num_threads(1)
        hpa.install()
        def shared(nbytes, value):                         # as the default collate makes them
            t = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
            return t.fill_(value)
        inside = shared(4 << 20, 1)                        # 3 pages with its control block
        beyond = [shared(16 << 20, i) for i in range(2, 6)]
        pid = os.fork()
        if pid == 0:
            ok = bool((inside == 1).all()) and all(bool((t == i + 2).all()) for i, t in enumerate(beyond))
            for t in beyond:
                t.add_(1)                                  # MAP_SHARED: the parent sees it
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        report(child=status, seen=[int(t[0]) for t in beyond], inside=kernel.page_size_kb(inside.data_ptr()),
               beyond=[kernel.page_size_kb(t.data_ptr()) for t in beyond],
               fallbacks=hpa.memory_stats()["num_shared_fallbacks"])
    """)
    assert r["child"] == 0, "the forked child died or read wrong data"
    assert r["seen"] == [3, 4, 5, 6]
    assert r["inside"] == 2048 and r["beyond"] == [4, 4, 4, 4]
    assert r["fallbacks"] == 4
