"""python -m hugepage_allocator reserve SIZE: set the kernel's huge page pool to hold SIZE.

Writes nr_hugepages (of the system, or of one NUMA node) in steps, showing progress, then reports
how many pages the kernel really gave: fragmented memory can give fewer, 1 GiB pages above all.
With --persist it also writes what keeps the pool across reboots.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from . import _system as system
from ._settings import parse_size

SYSCTL_FILE = "80-hugepage-allocator.conf"


def set_pages(size_kb: int, node: int | None, target: int, out=sys.stdout) -> int:
    """Moves the pool to `target` pages in up to 10 steps; returns the pages the kernel holds."""
    path = os.path.join(system.pool_dir(size_kb, node), "nr_hugepages")
    current = system.pool(size_kb, node).total
    steps = max(1, min(10, abs(target - current)))
    for i in range(1, steps + 1):
        goal = current + (target - current) * i // steps
        with open(path, "w") as f:
            f.write(str(goal))
        got = system.pool(size_kb, node).total
        print(f"\r  {system.size_label(size_kb)} pages: {got} of {target}", end="", file=out, flush=True)
        if got < goal:  # the kernel could not find more: asking again will not help
            break
    print(file=out)
    return system.pool(size_kb, node).total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hugepage_allocator reserve", description=__doc__.splitlines()[0])
    ap.add_argument("size", help="bytes the pool should hold, e.g. 4GB")
    ap.add_argument("--page-size", choices=["2M", "1G"], default="2M")
    ap.add_argument("--node", type=int, help="reserve on this NUMA node only")
    ap.add_argument("--persist", action="store_true", help="also keep the pool across reboots")
    ap.add_argument("--sysctl-dir", default="/etc/sysctl.d", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as e:
        ap.error(f"SIZE: {e}")
    size_kb = system.SIZES_KB[args.page_size]
    if size_kb not in system.page_sizes_kb():
        print(f"reserve: this kernel has no {args.page_size} huge pages", file=sys.stderr)
        return 2
    nodes = system.nodes()
    if args.node is not None and args.node not in nodes:
        ap.error(f"--node {args.node}: not an online NUMA node (nodes: {', '.join(map(str, sorted(nodes)))})")
    if not system.can_reserve():
        print("reserve: changing the kernel's huge page pools needs root (it writes "
              "/proc/sys/vm/nr_hugepages); run it with sudo", file=sys.stderr)
        return 2
    target = math.ceil(size / (size_kb << 10))
    where = "the system" if args.node is None else f"node {args.node}"
    print(f"Reserving {target} pages of {system.size_label(size_kb)} on {where}:")
    got = set_pages(size_kb, args.node, target)
    if got < target:
        print(f"The kernel gave {got} of {target} pages ({got * size_kb >> 10} MiB): memory is fragmented. "
              + ("Reserve 1 GiB pages at boot instead (see --persist)." if size_kb == 1048576
                 else "Try again after dropping caches (echo 3 > /proc/sys/vm/drop_caches), or at boot."))
    else:
        print(f"The pool holds {got} pages ({got * size_kb >> 10} MiB).")
    if args.persist:
        persist(size_kb, args.node, target, args.sysctl_dir)
    return 0 if got >= target else 1


def persist(size_kb: int, node: int | None, pages: int, sysctl_dir: str) -> None:
    if size_kb == 2048 and node is None:
        path = os.path.join(sysctl_dir, SYSCTL_FILE)
        with open(path, "w") as f:
            f.write(f"# Written by python -m hugepage_allocator reserve --persist\nvm.nr_hugepages = {pages}\n")
        print(f"Wrote {path}: the pool is set again at every boot.")
        return
    # 1 GiB pages, and pools of one node, are set on the kernel command line.
    spec = f"{node}:{pages}" if node is not None else str(pages)
    print("To keep this pool across reboots, add to the kernel command line (e.g. GRUB_CMDLINE_LINUX in "
          "/etc/default/grub, then update-grub):")
    print(f"  hugepagesz={'1G' if size_kb == 1048576 else '2M'} hugepages={spec}")
