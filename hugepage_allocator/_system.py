"""What the system offers, read from /sys and /proc: huge page pools, THP, NUMA, cgroup limits.

Used by `doctor`, `reserve` and the launcher; the allocator's native core reads what it needs itself.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

HUGEPAGES = "/sys/kernel/mm/hugepages"
NODES = "/sys/devices/system/node"
THP = "/sys/kernel/mm/transparent_hugepage"
SIZES_KB = {"2M": 2048, "1G": 1048576}


def _read(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _int(path: str) -> int:
    text = _read(path, "0")
    return int(text) if text.isdigit() else 0


def parse_id_list(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8]."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


def size_label(kb: int) -> str:
    return f"{kb // 1048576} GiB" if kb >= 1048576 else f"{kb // 1024} MiB"


@dataclass
class Pool:
    size_kb: int
    node: int | None  # None: the whole system
    total: int
    free: int
    reserved: int  # promised to mappings, not yet faulted (system-wide only)
    surplus: int


def page_sizes_kb() -> list[int]:
    """Huge page sizes the kernel supports, ascending."""
    try:
        names = os.listdir(HUGEPAGES)
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := re.match(r"hugepages-(\d+)kB$", n)))


def pool_dir(size_kb: int, node: int | None = None) -> str:
    base = HUGEPAGES if node is None else os.path.join(NODES, f"node{node}", "hugepages")
    return os.path.join(base, f"hugepages-{size_kb}kB")


def pool(size_kb: int, node: int | None = None) -> Pool:
    d = pool_dir(size_kb, node)
    free = _int(os.path.join(d, "free_hugepages"))
    resv = _int(os.path.join(d, "resv_hugepages")) if node is None else 0
    # Reserved pages are free pages; a count beyond them is the kernel's counter gone below zero
    # (seen as 2**64 - 11), shown as 0 rather than as eighteen quintillion.
    return Pool(size_kb, node, _int(os.path.join(d, "nr_hugepages")), free, resv if resv <= free else 0,
                _int(os.path.join(d, "surplus_hugepages")))


def nodes() -> dict[int, list[int]]:
    """Online NUMA nodes and their CPUs (one node 0 with every CPU when sysfs has no node directory)."""
    online = parse_id_list(_read(os.path.join(NODES, "online")))
    if not online:
        return {0: sorted(os.sched_getaffinity(0))}
    return {n: parse_id_list(_read(os.path.join(NODES, f"node{n}", "cpulist"))) for n in online}


def thp_modes() -> dict[str, str]:
    """The selected value of THP's `enabled` and `defrag` ('' when THP is absent)."""
    out = {}
    for knob in ("enabled", "defrag"):
        m = re.search(r"\[(\w[\w+]*)\]", _read(os.path.join(THP, knob)))
        out[knob] = m.group(1) if m else ""
    return out


def shmem_thp_mode() -> str:
    """The selected value of THP's `shmem_enabled` (huge pages for shared memory; '' when absent)."""
    m = re.search(r"\[(\w[\w+]*)\]", _read(os.path.join(THP, "shmem_enabled")))
    return m.group(1) if m else ""


def dev_shm() -> tuple[int, int] | None:
    """(size, free) of /dev/shm in bytes, where PyTorch's own shared memory lives; None if absent."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def hugetlb_limits() -> dict[int, int | None]:
    """This process's hugetlb cgroup limit per page size in bytes (None: no limit), cgroup v2 or v1."""
    limits: dict[int, int | None] = {}
    groups = _read("/proc/self/cgroup").splitlines()
    mounts = [line.split() for line in _read("/proc/mounts").splitlines()]
    for kb in page_sizes_kb():
        label = f"{kb // 1048576}GB" if kb >= 1048576 else f"{kb // 1024}MB"
        found: int | None = None
        for line in groups:
            hid, controllers, path = line.split(":", 2)
            if hid == "0":  # v2
                roots = [m[1] for m in mounts if len(m) > 2 and m[2] == "cgroup2"]
                files = [f"hugetlb.{label}.max"]
            elif "hugetlb" in controllers.split(","):  # v1
                roots = [m[1] for m in mounts if len(m) > 3 and m[2] == "cgroup" and "hugetlb" in m[3].split(",")]
                files = [f"hugetlb.{label}.limit_in_bytes"]
            else:
                continue
            for root in roots:
                p = path
                while True:  # the tightest limit on the way to the root
                    for name in files:
                        text = _read(os.path.join(root, p.lstrip("/"), name))
                        if text.isdigit() and int(text) < (1 << 62):
                            found = int(text) if found is None else min(found, int(text))
                    if p in ("/", ""):
                        break
                    p = os.path.dirname(p)
        limits[kb] = found
    return limits


def can_reserve() -> bool:
    """Whether this process may change the kernel's huge page pools."""
    return os.access("/proc/sys/vm/nr_hugepages", os.W_OK)
