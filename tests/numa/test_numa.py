"""NUMA placement on a real two-node machine, judged by /proc/self/numa_maps (the N0=/N1= page
counts and kernelpagesize_kB of the mapping that holds a tensor)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout

import pytest
import torch

from numa_util import kernel, on_cpu

MIB = 1 << 20


def placed(t: torch.Tensor) -> kernel.NumaPlacement:
    return kernel.numa_of(t.data_ptr())


def filled(nbytes: int) -> torch.Tensor:
    t = torch.empty(nbytes, dtype=torch.uint8)
    t.fill_(1)  # THP and ordinary pages are placed when first touched
    return t


def test_a_thread_on_each_cpu_gets_huge_pages_of_its_own_node(hpa):
    for cpu, node in ((0, 0), (1, 1)):
        big = on_cpu(cpu, lambda: filled(64 * MIB))
        small = on_cpu(cpu, lambda: filled(1000))
        for t in (big, small):
            p = placed(t)
            assert p.kernel_page_kb == 2048, p
            assert set(p.pages) == {node}, f"CPU {cpu} is on node {node}: {p}"
            assert p.policy == f"bind:{node}", "bound before it was populated"
        del big, small


def test_interleave_spreads_a_large_tensor_over_both_nodes(hpa):
    hpa.install(numa_policy="interleave")
    assert hpa.placement() == "interleave:0-1"
    t = on_cpu(0, lambda: filled(64 * MIB))
    p = placed(t)
    assert p.kernel_page_kb == 2048 and p.policy.startswith("interleave")
    assert p.pages.get(0, 0) >= 8 and p.pages.get(1, 0) >= 8, f"both nodes hold pages: {p}"
    assert hpa.memory_stats()["allocated_bytes.interleave.current"] >= 64 * MIB
    small = on_cpu(1, lambda: filled(4096))
    assert set(placed(small).pages) == {1}, "small tensors stay local"


def test_bind_puts_memory_on_node_1_from_cpu_0(hpa):
    hpa.install(numa_policy="bind:1")
    for nbytes in (64 * MIB, 1000):
        t = on_cpu(0, lambda: filled(nbytes))
        p = placed(t)
        assert p.kernel_page_kb == 2048 and set(p.pages) == {1}, p


def test_empty_with_a_node_places_one_tensor_there(hpa):
    t = on_cpu(0, lambda: hpa.empty(8 * MIB, dtype=torch.uint8, node=1))
    p = placed(t)
    assert p.kernel_page_kb == 2048 and set(p.pages) == {1}, p


def test_a_block_freed_on_the_other_node_returns_to_its_home(hpa):
    a = on_cpu(1, lambda: filled(8 * MIB))
    home = a.data_ptr()
    assert set(placed(a).pages) == {1}
    box = [a]
    del a
    on_cpu(0, lambda: box.clear())              # the last reference dies on CPU 0 (node 0)
    b = on_cpu(0, lambda: filled(8 * MIB))
    assert b.data_ptr() != home and set(placed(b).pages) == {0}, "node 0 did not take node 1's block"
    c = on_cpu(1, lambda: filled(8 * MIB))
    assert c.data_ptr() == home, "node 1 got its own block back"
    # Small objects: freed from node 0, they go back to node 1's lists, not to node 0's cache.
    objs = on_cpu(1, lambda: [filled(512) for _ in range(64)])
    addrs = {t.data_ptr() for t in objs}
    on_cpu(0, lambda: objs.clear())
    mine = on_cpu(0, lambda: [filled(512) for _ in range(64)])
    assert not addrs & {t.data_ptr() for t in mine}
    assert all(set(placed(t).pages) == {0} for t in mine)


def test_a_dry_node_falls_back_as_the_policy_says(hpa, node_pools):
    hpa.empty_cache()                           # our cached pages go back to the kernel first
    node_pools.set_free(1, 0)
    before = hpa.memory_stats()["num_node_fallbacks.node0"]
    # local: another node's huge pages before leaving huge pages
    t = on_cpu(1, lambda: filled(8 * MIB))
    p = placed(t)
    assert p.kernel_page_kb == 2048 and set(p.pages) == {0}, p
    assert hpa.memory_stats()["num_node_fallbacks.node0"] == before + 1
    # bind: THP or ordinary pages, still on node 1
    hpa.install(numa_policy="bind:1")
    u = on_cpu(1, lambda: filled(8 * MIB))
    q = placed(u)
    assert q.kernel_page_kb == 4 and set(q.pages) == {1} and q.policy == "bind:1", q
    assert hpa.memory_stats()["num_node_fallbacks"] == before + 1


def test_stats_summary_doctor_and_reserve_speak_per_node(hpa, node_pools):
    on_cpu(1, lambda: filled(4 * MIB))
    s = hpa.memory_stats()
    assert "allocated_bytes.node0.current" in s and "allocated_bytes.node1.current" in s
    summary = hpa.memory_summary()
    assert "node1" in summary and "placement: local" in summary
    from hugepage_allocator import _doctor, _reserve  # noqa: PLC0415

    report = _doctor.report(0)
    assert "node0" in report and "node1" in report and "CPUs 1" in report
    saved = kernel.node_pool(1, "2M", "nr_hugepages")
    try:
        with redirect_stdout(io.StringIO()):
            assert _reserve.main([f"{2 * (saved + 8)}MB", "--node", "1"]) == 0
        assert kernel.node_pool(1, "2M", "nr_hugepages") == saved + 8
        assert kernel.node_pool(0, "2M", "nr_hugepages") >= 0
    finally:
        kernel.set_node_pool(1, "2M", saved)


def run_under_numactl(numactl: list[str], code: str) -> str:
    script = "import sys; sys.path.insert(0, %r)\n" % os.path.dirname(os.path.dirname(__file__))
    script += "import torch, kernel, hugepage_allocator as hpa\n" + textwrap.dedent(code)
    proc = subprocess.run(["numactl", *numactl, sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_numactl_membind_is_followed_unless_a_setting_says_otherwise(session_pools):
    out = run_under_numactl(["--membind=1", "--cpunodebind=0"], """
        hpa.install()
        t = torch.empty(64 << 20, dtype=torch.uint8); t.fill_(1)
        p = kernel.numa_of(t.data_ptr())
        print("followed", hpa.placement(), p.kernel_page_kb, sorted(p.pages))
        hpa.install(numa_policy="local")
        u = torch.empty(64 << 20, dtype=torch.uint8); u.fill_(1)
        q = kernel.numa_of(u.data_ptr())
        print("overridden", hpa.placement(), q.kernel_page_kb, sorted(q.pages))
    """)
    assert "followed bind:1 2048 [1]" in out, out
    assert "overridden local 2048 [0]" in out, out


def test_numactl_interleave_is_followed(session_pools):
    out = run_under_numactl(["--interleave=all"], """
        hpa.install()
        t = torch.empty(64 << 20, dtype=torch.uint8); t.fill_(1)
        p = kernel.numa_of(t.data_ptr())
        print("followed", hpa.placement(), p.kernel_page_kb, sorted(p.pages))
    """)
    assert "followed interleave:0-1 2048 [0, 1]" in out, out


def test_a_forked_child_survives_the_parents_writes_when_only_its_node_is_dry(hpa, node_pools):
    """Copy-on-write of a segment bound to node 1 needs a free page on node 1: free pages on node 0
    do not help. With node 1 dry, the parent's write after fork() would take the page from the
    child (SIGBUS at its next read) unless the fork copies were made."""
    import ctypes
    import signal

    hpa.empty_cache()
    weights = on_cpu(1, lambda: filled(8 * MIB))
    assert set(placed(weights).pages) == {1}
    node_pools.set_free(1, 0)
    assert kernel.node_pool(0, "2M", "free_hugepages") >= 16, "node 0 has pages to spare"
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no torch operator (libgomp), only reads
        try:
            os.read(go_r, 1)
            ok = ctypes.string_at(weights.data_ptr(), 8 * MIB) == b"\x01" * (8 * MIB)
            os._exit(0 if ok else 3)
        except BaseException:  # noqa: BLE001
            os._exit(4)
    weights.fill_(2)                             # the parent updates its weights
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    os.close(go_r), os.close(go_w)
    assert not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGBUS, "the child died of SIGBUS"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status:#x}"
    assert int(weights.sum()) == 2 * 8 * MIB
