"""Under a hugetlb cgroup limit (what containers set), charged when a page is faulted in, a process
that wants more huge pages than the limit allows lives on with correct data: no SIGBUS."""
import os
import signal

import pytest


def _cgroup2_root():
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


@pytest.fixture
def hugetlb_cgroup(pools):
    """A cgroup v2 child whose 2 MiB hugetlb usage is capped at 8 MiB; removed afterwards."""
    root = _cgroup2_root()
    if root is None or not os.access(root, os.W_OK):
        pytest.skip("needs a writable cgroup v2 hierarchy (root)")
    with open(os.path.join(root, "cgroup.controllers")) as f:
        if "hugetlb" not in f.read().split():
            pytest.skip("the hugetlb cgroup controller is not available in this kernel's cgroup v2 root")
    control = os.path.join(root, "cgroup.subtree_control")
    with open(control) as f:
        was_enabled = "hugetlb" in f.read().split()
    try:
        with open(control, "w") as f:
            f.write("+hugetlb")
    except OSError as e:
        pytest.skip(f"cannot enable the hugetlb controller: {e.strerror}")
    path = os.path.join(root, f"hugepage-allocator-test-{os.getpid()}")
    os.mkdir(path)
    with open(os.path.join(path, "hugetlb.2MB.max"), "w") as f:
        f.write(str(8 << 20))
    pools.ensure_free("2M", 64)  # the kernel's pool has plenty: only the cgroup says no
    yield path
    os.rmdir(path)
    if not was_enabled:
        with open(control, "w") as f:
            f.write("-hugetlb")


JOIN = "open(os.path.join({cg!r}, 'cgroup.procs'), 'w').write(str(os.getpid()))\n"


def test_a_plain_first_touch_beyond_the_limit_dies_with_sigbus(hugetlb_cgroup, python):
    """The control: what the allocator must avoid really happens under this limit."""
    r = python(setup=JOIN.format(cg=hugetlb_cgroup), code="""
        import mmap
        m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)  # MAP_HUGETLB
        for offset in range(0, 64 << 20, 2 << 20):
            m[offset] = 1
        report(survived=True)
    """, check=False)
    assert r.returncode == -signal.SIGBUS


def test_allocations_beyond_the_limit_fall_back_and_keep_their_data(hugetlb_cgroup, python):
    r = python(setup=JOIN.format(cg=hugetlb_cgroup), code="""
        hpa.install()
        inside = torch.empty(6 << 20, dtype=torch.uint8)       # within the 8 MiB limit
        inside.fill_(1)
        beyond = [torch.full((16 << 20,), i, dtype=torch.uint8) for i in range(2, 6)]
        ok = bool((inside == 1).all()) and all(bool((t == i + 2).all()) for i, t in enumerate(beyond))
        report(ok=ok, inside=kernel.page_size_kb(inside.data_ptr()),
               beyond=[kernel.page_size_kb(t.data_ptr()) for t in beyond],
               fallbacks=hpa.memory_stats()["num_fallbacks.thp"])
    """)
    assert r["ok"]
    assert r["inside"] == 2048
    assert r["beyond"] == [4, 4, 4, 4]
    assert r["fallbacks"] >= 4


def test_doctor_shows_the_hugetlb_limit_of_its_cgroup(hugetlb_cgroup, python):
    r = python(setup=JOIN.format(cg=hugetlb_cgroup), code="""
        from hugepage_allocator import _doctor
        report(text=_doctor.report(1 << 30))
    """)
    assert "2 MiB: 8 MiB" in r["text"], r["text"]
