"""Put PyTorch CPU tensors on Linux huge pages.

    import hugepage_allocator
    hugepage_allocator.install()      # every CPU tensor from here on comes from the huge-page pool

The native core (hugepage_allocator._C) is loaded on first use, not at import.
"""
from __future__ import annotations

from ._api import (
    empty,
    empty_cache,
    install,
    is_installed,
    max_memory_allocated,
    memory_stats,
    memory_summary,
    placement,
    reset_peak_memory_stats,
    uninstall,
)
from ._errors import ConfigError

__all__ = [
    "ConfigError",
    "empty",
    "empty_cache",
    "install",
    "is_installed",
    "max_memory_allocated",
    "memory_stats",
    "memory_summary",
    "placement",
    "reset_peak_memory_stats",
    "uninstall",
]
__version__ = "0.1.0"
