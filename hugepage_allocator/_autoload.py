"""Switching the allocator on with no code change: HUGEPAGE_ALLOCATOR=1 in the environment.

PyTorch (2.5 and later) calls every `torch.backends` entry point at the end of `import torch`;
this package's points to `load()`. With the variable unset (or 0) it returns at once, without
loading the native module. With it set to 1 it installs the allocator with the settings of
HUGEPAGE_ALLOCATOR_CONF. An exception here would break `import torch`, so none escapes, except a
bad setting under an explicit HUGEPAGE_ALLOCATOR=1, which stops the program with a message
naming it (SystemExit, which PyTorch's loader does not catch).
"""
from __future__ import annotations

import os
import warnings

ENV = "HUGEPAGE_ALLOCATOR"
CONF_ENV = "HUGEPAGE_ALLOCATOR_CONF"
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def load() -> None:
    value = os.environ.get(ENV)
    if value is None or value.strip().lower() in _OFF:
        return
    if value.strip().lower() not in _ON:
        raise SystemExit(f"hugepage_allocator: {ENV}={value!r} is not allowed: use 1 to switch the "
                         f"allocator on, 0 (or leave it unset) to leave it off")
    from ._errors import ConfigError  # noqa: PLC0415

    try:
        if os.environ.get("HUGEPAGE_ALLOCATOR_BIND_NUMA") == "1":
            _bind_local_rank()
        from . import _api  # noqa: PLC0415

        _api.install()
    except ConfigError as e:
        raise SystemExit(f"hugepage_allocator: bad setting in {CONF_ENV}: {e}") from None
    except Exception as e:  # noqa: BLE001  (never break `import torch`)
        warnings.warn(f"hugepage_allocator: {ENV}=1 but the allocator was not installed: {e}",
                      RuntimeWarning, stacklevel=2)


def _bind_local_rank() -> None:
    """hugepage-run --bind-numa: local rank r runs on the CPUs of node r mod (number of nodes)."""
    rank = os.environ.get("LOCAL_RANK")
    if rank is None or not rank.isdigit():
        return
    from . import _system  # noqa: PLC0415

    nodes = _system.nodes()
    node = sorted(nodes)[int(rank) % len(nodes)]
    if nodes[node]:
        os.sched_setaffinity(0, nodes[node])
