"""Put PyTorch CPU tensors on Linux huge pages.

    import hugepage_allocator
    hugepage_allocator.install()      # every CPU tensor from here on comes from the huge-page pool

The native core (hugepage_allocator._C) is loaded on first use, not at import.
"""
from __future__ import annotations

# torch first: under HUGEPAGE_ALLOCATOR=1, `import torch` ends by calling this package's autoload
# entry point, which needs _api complete. Imported from _api instead, torch would call it while
# _api is still half-imported, and the allocator would not be installed.
import torch  # noqa: F401

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
from ._weights import to_hugepages

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
    "to_hugepages",
    "uninstall",
]
__version__ = "0.1.0"
