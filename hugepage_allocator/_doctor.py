"""python -m hugepage_allocator doctor: what this system offers for huge pages, and what to run."""
from __future__ import annotations

import math
import platform

from . import _system as system
from ._settings import parse_size


def report(want_bytes: int) -> str:
    lines = [f"hugepage_allocator doctor (Linux {platform.release()})", ""]
    sizes = system.page_sizes_kb()
    nodes = system.nodes()
    if not sizes:
        lines.append("This kernel offers no explicit huge pages (no /sys/kernel/mm/hugepages): the allocator "
                     "will use transparent huge pages, then ordinary pages.")
    else:
        lines.append("Explicit huge page pools (pages):")
        lines.append(f"  {'size':>6}  {'where':<7} {'total':>7} {'free':>7} {'reserved':>9} {'surplus':>8}")
        for kb in sizes:
            for node in [None] + sorted(nodes):
                p = system.pool(kb, node)
                where = "system" if node is None else f"node{node}"
                resv = str(p.reserved) if node is None else "-"
                lines.append(f"  {system.size_label(kb):>6}  {where:<7} {p.total:>7} {p.free:>7} {resv:>9} {p.surplus:>8}")
    thp = system.thp_modes()
    lines.append("")
    if thp["enabled"]:
        usable = thp["enabled"] in ("always", "madvise")
        lines.append(f"Transparent huge pages: enabled={thp['enabled']}, defrag={thp['defrag']}"
                     + ("" if usable else "  (the allocator's THP fallback is off: ordinary pages instead)"))
    else:
        lines.append("Transparent huge pages: not available in this kernel")
    lines.append("")
    lines.append(f"NUMA: {len(nodes)} node(s)")
    for node, cpus in sorted(nodes.items()):
        free = ", ".join(f"{system.pool(kb, node).free} of {system.pool(kb, node).total} {system.size_label(kb)} pages free"
                         for kb in sizes)
        lines.append(f"  node{node}: CPUs {_ranges(cpus)}" + (f"; {free}" if free else ""))
    if len(nodes) > 1:
        lines.append("  Placement (setting numa_policy): local by default, or what numactl set for the process;")
        lines.append("  with local placement each thread is served from its own node's pool, so reserve")
        lines.append("  pages on every node (reserve SIZE --node N), not only on one.")
    lines.append("")
    limits = system.hugetlb_limits()
    if any(v is not None for v in limits.values()):
        lines.append("hugetlb cgroup limits of this process (charged when pages are touched):")
        for kb, v in limits.items():
            lines.append(f"  {system.size_label(kb)}: " + ("none" if v is None else f"{v >> 20} MiB"))
        lines.append("  beyond them the allocator falls back to THP (no SIGBUS: it faults pages in with "
                     "MADV_POPULATE_WRITE)")
    else:
        lines.append("hugetlb cgroup limits of this process: none")
    lines.append("")
    lines += shared_memory(sizes)
    root = system.can_reserve()
    lines.append(f"This process may reserve huge pages: {'yes' if root else 'no (needs root)'}")
    lines.append("")
    lines += advice(want_bytes, sizes, nodes, root)
    return "\n".join(lines)


def shared_memory(sizes: list[int]) -> list[str]:
    """Where batches of DataLoader workers and torch.multiprocessing tensors go, with and without."""
    out = ["Shared memory (DataLoader worker batches, share_memory_(), torch.multiprocessing queues):"]
    shm = system.dev_shm()
    if shm is None:
        out.append("  /dev/shm: absent (PyTorch's own shared memory needs it)")
    else:
        size, free = shm
        out.append(f"  /dev/shm (PyTorch's own, 4 KiB pages): {size / (1 << 30):.2f} GiB, {free / (1 << 30):.2f} GiB free"
                   + ("  (small: workers die of 'Bus error' when it fills)" if size < (1 << 30) else ""))
    free_2m = system.pool(2048).free if 2048 in sizes else 0
    shmem = system.shmem_thp_mode()
    fallback = ("shared memory advised for THP" if shmem in ("always", "within_size", "advise", "force")
                else f"ordinary pages (shmem_enabled={shmem or 'absent'})")
    out.append(f"  with the allocator (shared_memory setting): memory files of 2 MiB pages from 1 MiB up, "
               f"{free_2m} such pages free now;")
    out.append(f"    not bounded by /dev/shm; when the pool is dry: {fallback}")
    return out


def advice(want: int, sizes: list[int], nodes: dict[int, list[int]], root: bool) -> list[str]:
    out = [f"To have a pool of {want / (1 << 30):g} GiB:"]
    sudo = "" if root else "sudo "
    if 2048 in sizes:
        p = system.pool(2048)
        need = math.ceil(want / (2 << 20))
        if p.free >= need:
            out.append(f"  2 MiB pages: {p.free} are free already; nothing to do.")
        else:
            target = p.total - p.free + need
            out.append(f"  2 MiB pages: {sudo}python -m hugepage_allocator reserve {want >> 20}MB"
                       f"      (sets /proc/sys/vm/nr_hugepages to {target})")
            out.append(f"    at every boot: {sudo}python -m hugepage_allocator reserve {want >> 20}MB --persist")
            if len(nodes) > 1:
                share = math.ceil(need / len(nodes)) * 2
                per_node = "; ".join(f"{sudo}python -m hugepage_allocator reserve {share}MB --node {n}" for n in sorted(nodes))
                out.append(f"    split over the nodes (for local placement): {per_node}")
    if 1048576 in sizes:
        need_g = math.ceil(want / (1 << 30))
        out.append(f"  1 GiB pages: {sudo}python -m hugepage_allocator reserve {need_g}GB --page-size 1G"
                   "      (at run time the kernel may give fewer: memory fragments;")
        out.append(f"    at boot they always succeed: add 'hugepagesz=1G hugepages={need_g}' to the kernel command line)")
    if not root:
        out.append("  Without root nothing can be reserved; the allocator then uses whatever is free,")
        out.append("  then transparent huge pages.")
    return out


def _ranges(ids: list[int]) -> str:
    if not ids:
        return "none"
    out, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hugepage_allocator doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4GB", help="the pool size to give advice for (default 4GB)")
    args = ap.parse_args(argv)
    try:
        want = parse_size(args.size)
    except ValueError as e:
        ap.error(f"--size: {e}")
    print(report(want))
    return 0
