"""The kernel's view of memory, from /proc and /sys: what the tests judge placement by."""
from __future__ import annotations

import os
from dataclasses import dataclass

HUGEPAGES = "/sys/kernel/mm/hugepages"
SIZE_DIRS = {"2M": "hugepages-2048kB", "1G": "hugepages-1048576kB"}


@dataclass
class Mapping:
    start: int
    end: int
    kernel_page_kb: int
    anon_huge_kb: int
    rss_kb: int


def mapping_of(address: int, pid: str = "self") -> Mapping:
    """The /proc/<pid>/smaps entry of the mapping that holds `address`."""
    found = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):  # a mapping's header line: "start-end perms ..."
                if found is not None:
                    break
                lo, hi = (int(x, 16) for x in head.split("-"))
                if lo <= address < hi:
                    found = {"start": lo, "end": hi}
            elif found is not None and head in ("KernelPageSize:", "AnonHugePages:", "Rss:"):
                found[head[:-1]] = int(line.split()[1])
    if found is None:
        raise LookupError(f"no mapping holds address {address:#x}")
    return Mapping(found["start"], found["end"], found["KernelPageSize"], found["AnonHugePages"], found["Rss"])


def page_size_kb(address: int) -> int:
    """KernelPageSize of the mapping holding `address`: 4, 2048 or 1048576."""
    return mapping_of(address).kernel_page_kb


def hugetlb_kb(pid: str = "self") -> int:
    """Explicit huge pages a process maps, in kB (smaps_rollup: Private_Hugetlb + Shared_Hugetlb)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
                total += int(line.split()[1])
    return total


def pool(size: str, field: str) -> int:
    """A counter of the kernel's hugetlb pool: nr_hugepages, free_hugepages, resv_hugepages, ..."""
    with open(os.path.join(HUGEPAGES, SIZE_DIRS[size], field)) as f:
        return int(f.read())


def unreserved_free(size: str) -> int:
    """Free pages of `size` that a new mapping may take: free_hugepages less resv_hugepages. A
    resv_hugepages above free_hugepages is the kernel's counter gone below zero (seen on Linux 6.18
    as 2**64 - 11) and is read as no reservation."""
    free, resv = pool(size, "free_hugepages"), pool(size, "resv_hugepages")
    return free - resv if resv <= free else free


def set_pool(size: str, pages: int) -> int:
    """Asks the kernel for `pages` persistent huge pages of `size`; returns how many it has now."""
    with open(os.path.join(HUGEPAGES, SIZE_DIRS[size], "nr_hugepages"), "w") as f:
        f.write(str(pages))
    return pool(size, "nr_hugepages")


@dataclass
class NumaPlacement:
    policy: str                # the mapping's memory policy: "default", "bind:1", "interleave:0-1", ...
    pages: dict[int, int]      # node -> pages of the mapping resident there
    kernel_page_kb: int


def numa_of(address: int, pid: str = "self") -> NumaPlacement:
    """The /proc/<pid>/numa_maps entry of the mapping that holds `address`."""
    start = mapping_of(address, pid).start
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            fields = line.split()
            if int(fields[0], 16) != start:
                continue
            pages = {int(k[1:]): int(v) for k, _, v in (x.partition("=") for x in fields[2:])
                     if k[:1] == "N" and k[1:].isdigit()}
            kb = next((int(x.split("=")[1]) for x in fields if x.startswith("kernelpagesize_kB=")), 4)
            return NumaPlacement(fields[1], pages, kb)
    raise LookupError(f"no numa_maps entry starts at {start:#x}")


def node_pool(node: int, size: str, field: str) -> int:
    """A counter of one node's hugetlb pool: nr_hugepages, free_hugepages, surplus_hugepages."""
    path = f"/sys/devices/system/node/node{node}/hugepages/{SIZE_DIRS[size]}/{field}"
    with open(path) as f:
        return int(f.read())


def set_node_pool(node: int, size: str, pages: int) -> int:
    """Asks for `pages` persistent huge pages of `size` on `node`; returns how many it has now."""
    path = f"/sys/devices/system/node/node{node}/hugepages/{SIZE_DIRS[size]}/nr_hugepages"
    with open(path, "w") as f:
        f.write(str(pages))
    return node_pool(node, size, "nr_hugepages")


SHARED_FILE = "/memfd:hugepage-allocator"  # the name of the allocator's shared memory files


@dataclass
class SharedFiles:
    """The allocator's shared memory files a process holds, by inode: mapped, and open as fds."""
    mapped: set
    open_fds: int


def shared_files(pid: str = "self") -> SharedFiles:
    mapped = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith(SHARED_FILE):
                mapped.add(int(fields[4]))
    fd_dir = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)).startswith(SHARED_FILE):
                count += 1
        except OSError:
            pass
    return SharedFiles(mapped, count)


def inode_of(address: int, pid: str = "self") -> int:
    """The inode of the file mapped at `address` (0 for anonymous memory)."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return int(fields[4])
    raise LookupError(f"no mapping holds address {address:#x}")
