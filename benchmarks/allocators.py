"""The allocators compared, each as the environment of the worker process that runs it, and the
huge page reservations a worker needs while it runs.

Every configuration runs in a process of its own: the LD_PRELOAD libraries and the glibc and
PyTorch switches only take effect at process start. Shared libraries are found with `dpkg -L` at
run time; a configuration whose library is not installed is reported as unavailable, not guessed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess

import workloads

HUGEPAGES = "/sys/kernel/mm/hugepages"
SIZE_DIRS = {"2M": "hugepages-2048kB", "1G": "hugepages-1048576kB"}
PAGE_BYTES = {"2M": 2 << 20, "1G": 1 << 30}
DEBIAN_PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4", "mimalloc": "libmimalloc2.0"}
# The library each package provides, as named in `dpkg -L` (the versioned soname link).
_SONAMES = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4", "mimalloc": "libmimalloc.so.2"}


@dataclasses.dataclass(frozen=True)
class Allocator:
    name: str          # column label in the report
    about: str         # one line for the report's legend
    env: dict          # environment of the worker process (LD_PRELOAD resolved at run time)
    preload: str = ""  # key of _SONAMES to LD_PRELOAD
    hugetlb: tuple = ()  # page sizes this configuration takes from the kernel's hugetlb pools
    workloads: tuple = ()  # if set, only these workload groups


_HPA = {"HUGEPAGE_ALLOCATOR": "1"}

ALLOCATORS = [
    Allocator("default", "PyTorch's default CPU allocator (glibc malloc, 4 KiB pages)", {}),
    Allocator("hpa-2M", "this allocator, 2 MiB pages", {**_HPA, "HUGEPAGE_ALLOCATOR_CONF": "page_sizes:[2M]"},
              hugetlb=("2M",)),
    Allocator("hpa-1G", "this allocator, `training` preset: 1 GiB pages from 256 MiB up, 2 MiB below",
              {**_HPA, "HUGEPAGE_ALLOCATOR_CONF": "training"}, hugetlb=("1G", "2M")),
    Allocator("hpa-2M-prefault", "this allocator, 2 MiB pages, pool faulted in at start (`prefault`)",
              {**_HPA, "HUGEPAGE_ALLOCATOR_CONF": "page_sizes:[2M],prefault:{prefault}"}, hugetlb=("2M",),
              workloads=("first_touch", "inference")),
    Allocator("hpa-2M-mapped", "this allocator, 2 MiB pages, `move_weights:false`: loaded weights stay on the "
              "file's mapping", {**_HPA, "HUGEPAGE_ALLOCATOR_CONF": "page_sizes:[2M],move_weights:false"},
              hugetlb=("2M",), workloads=("generate",)),
    Allocator("torch-thp", "PyTorch's THP switch (THP_MEM_ALLOC_ENABLE=1: madvise on blocks of 2 MiB and up)",
              {"THP_MEM_ALLOC_ENABLE": "1"}),
    Allocator("glibc-thp", "glibc malloc with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (madvise THP)",
              {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    Allocator("glibc-hugetlb", "glibc malloc with GLIBC_TUNABLES=glibc.malloc.hugetlb=2 (mmap'd chunks on 2 MiB hugetlb)",
              {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"}, hugetlb=("2M",)),
    Allocator("jemalloc", "jemalloc via LD_PRELOAD", {}, preload="jemalloc"),
    Allocator("jemalloc-thp", "jemalloc via LD_PRELOAD, MALLOC_CONF=thp:always,metadata_thp:always",
              {"MALLOC_CONF": "thp:always,metadata_thp:always"}, preload="jemalloc"),
    Allocator("tcmalloc", "tcmalloc (gperftools, minimal) via LD_PRELOAD", {}, preload="tcmalloc"),
    Allocator("mimalloc", "mimalloc via LD_PRELOAD", {}, preload="mimalloc"),
    Allocator("torch-file_system", "PyTorch's default allocator with torch.multiprocessing's file_system sharing "
              "strategy (files in /dev/shm by name, kept by torch_shm_manager)",
              {"HPA_BENCH_SHARING_STRATEGY": "file_system"}, workloads=("dataloader",)),
]
BY_NAME = {a.name: a for a in ALLOCATORS}
BASELINE = "default"


def for_workload(group: str) -> list[Allocator]:
    only = workloads.GROUPS[group].allocators
    return [a for a in ALLOCATORS if (not a.workloads or group in a.workloads) and (not only or a.name in only)]


def library_path(key: str) -> str | None:
    """The installed path of an LD_PRELOAD library, from the Debian package's file list."""
    if shutil.which("dpkg") is None:
        return None
    out = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGES[key]], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    for line in out.stdout.splitlines():
        if os.path.basename(line) == _SONAMES[key] and os.path.exists(line):
            return line
    return None


def package_version(key: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", DEBIAN_PACKAGES[key]],
                         capture_output=True, text=True) if shutil.which("dpkg-query") else None
    return out.stdout.strip() if out is not None and out.returncode == 0 else "not installed"


def environment(alloc: Allocator, prefault_bytes: int = 0) -> tuple[dict | None, str]:
    """The worker's environment, or (None, why) when the configuration cannot run here."""
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE",
              "HUGEPAGE_ALLOCATOR", "HUGEPAGE_ALLOCATOR_CONF", "HPA_BENCH_SHARING_STRATEGY"):
        env.pop(k, None)
    for k, v in alloc.env.items():
        env[k] = v.format(prefault=prefault_bytes)
    if alloc.preload:
        path = library_path(alloc.preload)
        if path is None:
            return None, f"{DEBIAN_PACKAGES[alloc.preload]} is not installed"
        env["LD_PRELOAD"] = path
    return env, ""


# ---------------------------------------------------------------------------------------------
# Huge page reservations

def _pool_path(size: str, field: str) -> str:
    return os.path.join(HUGEPAGES, SIZE_DIRS[size], field)


def pool_count(size: str, field: str) -> int:
    try:
        with open(_pool_path(size, field)) as f:
            return int(f.read())
    except OSError:
        return 0


def available(size: str) -> int:
    """Free pages not promised to a mapping. resv_hugepages is ignored when it is beyond the pool:
    the kernel's counter can underflow (it has been seen at 2**64 - 11)."""
    free, resv = pool_count(size, "free_hugepages"), pool_count(size, "resv_hugepages")
    return free - resv if 0 <= resv <= free else free


def can_reserve() -> bool:
    return os.access(_pool_path("2M", "nr_hugepages"), os.W_OK)


def _set_pool(size: str, pages: int) -> None:
    with open(_pool_path(size, "nr_hugepages"), "w") as f:
        f.write(str(pages))


_MAP_HUGETLB = 0x40000
_MAP_HUGE_SHIFT = 26
_MADV_POPULATE_WRITE = 23


def _warm(size: str, pages: int) -> None:
    """Faults `pages` free huge pages of `size` in once and gives them back to the pool.

    On a virtual machine that hands free memory back to its host (free page reporting works on
    2 MiB blocks), the first touch of a freshly reserved huge page costs the host's fault as well:
    about 2.4 s per GiB on the machine of the published run, against 0.04 s per GiB for a page used
    before. A pool reserved ahead of a job, as huge pages are, has had that paid long before; so
    the benchmark pays it here, outside the measurement."""
    import mmap

    unit = PAGE_BYTES[size]
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_HUGETLB | (unit.bit_length() - 1) << _MAP_HUGE_SHIFT
    chunk = max(1, (256 << 20) // unit)
    while pages > 0:
        n = min(chunk, pages)
        try:
            m = mmap.mmap(-1, n * unit, flags=flags)
        except OSError:
            return  # someone else took them meanwhile: nothing to warm
        try:
            m.madvise(_MADV_POPULATE_WRITE)
        except OSError:
            pass
        finally:
            m.close()
        pages -= n


@contextlib.contextmanager
def reserved(need: dict, warm: bool = True):
    """Makes at least `need[size]` bytes of free pages of each size available while the block runs
    (faulted in once, see _warm), then takes out again the pages it added; the machine is shared,
    so the pools are changed by difference, not set back to a remembered size. Yields {size: free
    pages}; without root it reserves nothing and yields what is free."""
    added = {}
    got = {}
    try:
        for size, nbytes in need.items():
            if nbytes <= 0:
                continue
            pages = -(-nbytes // PAGE_BYTES[size])
            free = available(size)
            if free < pages and can_reserve():
                before = pool_count(size, "nr_hugepages")
                _set_pool(size, before + pages - free)
                added[size] = pool_count(size, "nr_hugepages") - before
            got[size] = available(size)
            if warm:
                _warm(size, min(pages, got[size]))
        yield got
    finally:
        for size, pages in added.items():
            _set_pool(size, max(0, pool_count(size, "nr_hugepages") - pages))
