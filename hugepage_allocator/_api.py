"""The public API; thin over the native module, which is imported on first use."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

import torch

from . import _settings
from ._errors import ConfigError

# Page kinds as the native core numbers them (csrc/os.h, PageKind).
_KIND_1G, _KIND_2M, _KIND_THP, _KIND_BASE = 0, 1, 2, 3
_PAGE_SIZE_KIND = {"2M": _KIND_2M, "1G": _KIND_1G}
_UNLIMITED = (1 << 64) - 1
_installed: dict[str, Any] | None = None  # the settings of the last install()


def _native():
    from . import _C  # noqa: PLC0415  (deferred: loading it is the user's choice)

    return _C


def _kind_mask(values: dict[str, Any]) -> int:
    mask = 0
    if "1G" in values["page_sizes"]:
        mask |= 1 << _KIND_1G
    if "2M" in values["page_sizes"]:
        mask |= 1 << _KIND_2M
    if "thp" in values["fallback"]:
        mask |= 1 << _KIND_THP
    if "base" in values["fallback"]:
        mask |= 1 << _KIND_BASE
    return mask


def _numa(policy: tuple[str, tuple[int, ...]] | None) -> tuple[int, int]:
    """(mode number, node mask) for the native install(); (-1, 0) to follow the process policy."""
    if policy is None:
        return -1, 0
    mode, nodes = policy
    online = list(_native().nodes())
    missing = [n for n in nodes if n not in online]
    if missing:
        shown = f"{mode}:{'+'.join(map(str, nodes))}"
        raise ConfigError(f"bad value for setting 'numa_policy': {shown!r} names node {missing[0]}, which is "
                          f"not an online NUMA node this process may use (nodes: {online})")
    mask = 0
    for n in nodes:
        mask |= 1 << n
    return _settings._NUMA_MODES.index(mode), mask


def placement() -> str:
    """The NUMA placement in effect, in ``numa_policy``'s words (``local``, ``bind:1``, ...).

    Shows what the process's memory policy (numactl) made of an unset ``numa_policy``.
    """
    return str(_native().placement())


def install(config: Any = None, **settings: Any) -> None:
    """Makes the huge-page allocator PyTorch's CPU allocator for this process.

    ``config`` is a dict, an inline ``key:value,key:[a,b]`` string, a preset name from configs/
    (``default``, ``training``, ``inference``, ``small``) or a TOML file path. Precedence: keyword
    arguments > HUGEPAGE_ALLOCATOR_CONF > ``config`` > defaults. Calling it again (installed or not) applies the new settings.
    Call it before other threads allocate tensors (PyTorch's allocator switch is not thread-safe).
    Raises ConfigError for a bad setting.
    """
    global _installed
    values = _settings.resolve(config, settings)
    max_cached = values["max_cached"]
    numa_mode, numa_nodes = _numa(values["numa_policy"])
    _native().install(values["min_size"], values["huge_1g_min_size"], _kind_mask(values),
                      _UNLIMITED if max_cached is None else max_cached, numa_mode, numa_nodes,
                      values["max_shared_cached"])
    from . import _shared  # noqa: PLC0415

    _shared.enable(values["shared_memory"])
    from . import _weights  # noqa: PLC0415

    _weights.enable(values["move_weights"])
    _installed = values
    if values["prefault"]:
        # Taken, touched (hugetlb memory is faulted in when mapped, THP and base pages only now)
        # and freed: it stays in the pool for the first requests.
        warm = torch.empty(values["prefault"], dtype=torch.uint8)
        warm.fill_(0)
        del warm


def uninstall() -> None:
    """Stops serving new tensors from the huge-page pool; PyTorch's previous allocator serves them.

    The allocator stays registered, so tensors it made (and oneDNN buffers, which are freed
    through whichever allocator is current) are still freed correctly. Cached pages stay in the
    pool until ``empty_cache()``.
    """
    global _installed
    _native().uninstall()
    from . import _shared, _weights  # noqa: PLC0415

    _shared.enable(False)
    _weights.enable(False)
    _installed = None


def installed_settings() -> dict[str, Any] | None:
    """The validated settings of the install() in effect, or None when not installed."""
    return dict(_installed) if _installed is not None and is_installed() else None


def is_installed() -> bool:
    """True while new CPU tensors are served by the huge-page allocator."""
    return bool(_native().is_installed())


def memory_stats() -> "OrderedDict[str, int]":
    """Counters in the style of ``torch.cuda.memory_stats()``; the README's Statistics section lists them.

    Byte stats are ``<stat>.<pool>.<current|peak|allocated|freed>`` with pool ``all``, a page kind
    (``hugetlb_1G``, ``hugetlb_2M``, ``thp``, ``base``) or a node (``node0``, ...):
    ``allocated_bytes`` (``all``: what tensors hold; kinds and nodes: spans in use),
    ``reserved_bytes`` (mapped from the kernel), ``slack_bytes`` (large spans beyond the request),
    and ``requested_bytes.all`` (no peak). Events ``num_allocs``, ``num_frees``, ``num_cache_hits``,
    ``num_maps``, ``num_unmaps``, ``num_map_failures``, ``num_fallbacks``, ``num_node_fallbacks``
    (spans a node served because the request's home node had no explicit huge page left), in total
    and per kind and node, plus ``num_ooms`` and ``num_passthrough``. On a machine of two nodes or
    more, pool ``interleave`` holds what the ``interleave`` placement spread over the nodes.
    """
    return OrderedDict(sorted(_native().stats().items()))


def max_memory_allocated() -> int:
    """Peak of ``allocated_bytes.all`` since start or the last ``reset_peak_memory_stats()``."""
    return int(_native().stats()["allocated_bytes.all.peak"])


def reset_peak_memory_stats() -> None:
    """Sets every peak to its current value."""
    _native().reset_peak_memory_stats()


def empty_cache() -> int:
    """Gives every cached (free) block back to the kernel; returns the bytes released.

    Explicit huge pages return to the kernel's pool (``free_hugepages`` grows). Blocks in use are
    not touched.
    """
    return int(_native().empty_cache())


def empty(
    shape: int | Sequence[int],
    dtype: torch.dtype = torch.float32,
    page_size: str = "2M",
    node: int | None = None,
) -> torch.Tensor:
    """An uninitialised tensor on explicit huge pages of ``page_size`` ("2M" or "1G").

    With ``node`` set, the pages come from that NUMA node; otherwise from the calling CPU's node.
    There is no fallback: if no such page is free, ``torch.OutOfMemoryError`` is raised. The
    memory goes back to the pool when the tensor dies. Works whether or not ``install()`` was called.
    """
    if not isinstance(page_size, str) or page_size not in _PAGE_SIZE_KIND:
        raise ConfigError(f"page_size must be one of {list(_PAGE_SIZE_KIND)}, not {page_size!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, not {type(dtype).__name__}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise ValueError(f"shape must be non-negative ints, not {shape!r}")
    native = _native()
    if node is None:
        node = -1
    elif type(node) is not int or node not in native.nodes():
        raise ValueError(f"node {node!r} is not an online NUMA node; nodes: {native.nodes()}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(shape) * itemsize
    if nbytes > _settings.MAX_SIZE:
        raise ValueError(f"a tensor of shape {shape} and dtype {dtype} needs {nbytes} bytes, over the 2**62 allowed")
    raw = native.empty_bytes(nbytes, _PAGE_SIZE_KIND[page_size], node)
    return raw.view(dtype).view(shape)


def memory_summary() -> str:
    """A table of ``memory_stats()`` in the style of ``torch.cuda.memory_summary()``."""
    from ._summary import format_summary  # noqa: PLC0415

    native = _native()
    return format_summary(memory_stats(), list(native.nodes()), list(native.page_kind_names()), placement())
