"""Shared CPU memory on huge pages: PyTorch's shared-memory paths, routed to the allocator's regions.

Under PyTorch's ``file_descriptor`` sharing strategy (Linux's default), three paths make shared
memory: the default collate in DataLoader workers (``UntypedStorage._new_shared``),
``share_memory_()``, and the pickling of a storage for a torch.multiprocessing queue or process
argument (the reducer torch.multiprocessing registers with ``multiprocessing.reduction.ForkingPickler``).
With the ``shared_memory`` setting on, the first two take a region of the allocator's
(csrc/shared_memory.h, Note [Shared memory]: a memfd of explicit huge pages, reused batch after
batch), and a storage on a region is pickled as the region's file descriptor and rebuilt by
``rebuild_storage`` below in the receiving process, which need not have installed the allocator.
Everything else is left to PyTorch's own code, and so is every request no region can serve.

The PyTorch internals wrapped here, each checked by ``_problems()`` before anything is changed (on
a mismatch PyTorch's paths are left alone, with one warning):
- ``torch.UntypedStorage._new_shared(size, *, device="cpu")`` (torch/storage.py), which
  ``TypedStorage._new_shared`` and the default collate in workers call;
- ``torch.UntypedStorage.share_memory_`` and ``torch.UntypedStorage.is_shared``;
- ``torch.multiprocessing.reductions.reduce_storage``, registered for ``torch.UntypedStorage`` in
  ``ForkingPickler._extra_reducers``, and that module's ``shared_cache``, ``fd_id``,
  ``storage_from_cache`` and ``StorageWeakRef`` (a process's table of the shared storages it
  holds, by file identity, so that a storage sent twice arrives as one);
- ``torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers``: once it has
  joined the workers, the mappings this process kept of their regions are dropped.
"""
from __future__ import annotations

import inspect
import multiprocessing.reduction
import os
import threading
import warnings
from typing import Any, Callable

import torch

_lock = threading.Lock()
_enabled = False  # new shared storages go to regions
_patched = False
_refused: str | None = None  # why PyTorch's paths were left alone
_original: dict[str, Callable[..., Any]] = {}


def _native():
    from . import _C  # noqa: PLC0415

    return _C


def _reductions():
    import torch.multiprocessing.reductions as reductions  # noqa: PLC0415

    return reductions


def _loader_iter():
    from torch.utils.data import dataloader  # noqa: PLC0415

    return dataloader._MultiProcessingDataLoaderIter


def _on_regions(device: Any = "cpu") -> bool:
    """Whether a new shared storage on `device` goes to a region now."""
    return (_enabled and torch.device(device).type == "cpu"
            and torch.multiprocessing.get_sharing_strategy() == "file_descriptor")


# --- The wrappers.

def _new_shared(cls, size, *, device="cpu"):
    if cls is torch.UntypedStorage and isinstance(size, int) and size > 0 and _on_regions(device):
        storage = _native().new_shared(size)
        if storage is not None:
            return storage
    return _original["_new_shared"](cls, size, device=device)


def _share_memory_(self, *args, **kwargs):
    if (not args and not kwargs and _on_regions(self.device) and self.nbytes() > 0
            and not self.is_shared() and _native().move_to_shared(self)):
        return self
    return _original["share_memory_"](self, *args, **kwargs)


def _is_shared(self) -> bool:
    if self.device.type == "cpu" and _native().is_shared_region(self):
        return True
    return _original["is_shared"](self)


def _reduce_storage(storage):
    if _on_regions(storage.device) and storage.nbytes() > 0 and not storage.is_shared():
        storage.share_memory_()  # to a region, in place, as PyTorch's reducer moves it to /dev/shm
    handle = _native().share_storage(storage) if storage.device.type == "cpu" else None
    if handle is None:
        return _original["reduce_storage"](storage)
    fd, size = handle  # counted as one more holder: the receiver's storage gives it back
    try:
        df = multiprocessing.reduction.DupFd(fd)
        reductions = _reductions()
        reductions.shared_cache[reductions.fd_id(fd)] = reductions.StorageWeakRef(storage)
    except BaseException:
        _native().drop_message(storage)
        raise
    return (rebuild_storage, (type(storage), df, storage.nbytes(), size))


def rebuild_storage(cls, df, nbytes: int, size: int):
    """Rebuilds, in the receiving process, a storage on a region that another process sent."""
    fd = df.detach()
    try:
        reductions = _reductions()
        key = reductions.fd_id(fd)
        storage = reductions.storage_from_cache(cls, key)
        if storage is not None:  # this process holds it already: the message's count goes
            _native().drop_message(storage)
            return storage
        storage = _native().receive_shared(fd, nbytes, size)
        reductions.shared_cache[key] = reductions.StorageWeakRef(storage)
        return storage
    finally:
        os.close(fd)


def _shutdown_workers(self) -> None:
    try:
        _original["_shutdown_workers"](self)
    finally:
        _native().reap_shared()  # the workers are gone: so are the regions they owned


# --- Installing them.

def _problems() -> list[str]:
    """What about this torch differs from what the wrappers expect; empty when all is as expected."""
    out = []
    try:
        params = list(inspect.signature(torch.UntypedStorage._new_shared).parameters.values())
        if ([(p.name, p.kind) for p in params] != [("size", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                                    ("device", inspect.Parameter.KEYWORD_ONLY)]
                or params[1].default != "cpu"):
            out.append(f"torch.UntypedStorage._new_shared has the signature "
                       f"{inspect.signature(torch.UntypedStorage._new_shared)}, not (size, *, device='cpu')")
    except (AttributeError, TypeError, ValueError) as e:
        out.append(f"torch.UntypedStorage._new_shared: {e}")
    for name in ("share_memory_", "is_shared"):
        if not callable(getattr(torch.UntypedStorage, name, None)):
            out.append(f"torch.UntypedStorage.{name} is missing")
    try:
        reductions = _reductions()
        registered = multiprocessing.reduction.ForkingPickler._extra_reducers.get(torch.UntypedStorage)
        if registered is not getattr(reductions, "reduce_storage", None):
            out.append("torch.multiprocessing does not register reduce_storage for torch.UntypedStorage")
        missing = [n for n in ("shared_cache", "fd_id", "storage_from_cache", "StorageWeakRef")
                   if not hasattr(reductions, n)]
        if missing:
            out.append(f"torch.multiprocessing.reductions lacks {', '.join(missing)}")
    except ImportError as e:
        out.append(f"torch.multiprocessing.reductions: {e}")
    try:
        if not callable(getattr(_loader_iter(), "_shutdown_workers", None)):
            out.append("the DataLoader's worker iterator has no _shutdown_workers")
    except (ImportError, AttributeError) as e:
        out.append(f"torch.utils.data.dataloader: {e}")
    return out


def _patch() -> None:
    global _patched, _refused
    problems = _problems()
    if problems:
        _refused = "; ".join(problems)
        warnings.warn(f"hugepage_allocator: shared memory stays on PyTorch's own path (4 KiB pages): "
                      f"this torch {torch.__version__} is not what the shared_memory setting was built for: "
                      f"{_refused}", RuntimeWarning, stacklevel=3)
        return
    storage_cls, loader_iter = torch.UntypedStorage, _loader_iter()
    new_shared = inspect.getattr_static(storage_cls, "_new_shared").__func__
    _original.update(
        _new_shared=new_shared,
        share_memory_=storage_cls.share_memory_,
        is_shared=storage_cls.is_shared,
        reduce_storage=_reductions().reduce_storage,
        _shutdown_workers=loader_iter._shutdown_workers,
    )
    # share_memory_ keeps PyTorch's per-storage lock (several threads sharing one storage) where it has one.
    lock_protected = getattr(torch.storage, "_share_memory_lock_protected", lambda f: f)
    storage_cls._new_shared = classmethod(_new_shared)
    storage_cls.share_memory_ = lock_protected(_share_memory_)
    storage_cls.is_shared = _is_shared
    multiprocessing.reduction.ForkingPickler.register(storage_cls, _reduce_storage)
    loader_iter._shutdown_workers = _shutdown_workers
    _patched = True


def enable(on: bool) -> None:
    """Routes new shared storages to regions (True) or back to PyTorch (False). Storages already on
    regions keep being pickled and recognised as shared either way."""
    global _enabled
    with _lock:
        if on and not _patched and _refused is None:
            _patch()
        _enabled = bool(on) and _patched


def status() -> str:
    """In words: whether new shared storages go to huge-page regions, and if not, why."""
    if _enabled:
        return "on (file_descriptor strategy: regions of huge pages)" \
            if torch.multiprocessing.get_sharing_strategy() == "file_descriptor" \
            else "on, but idle: the file_system sharing strategy is PyTorch's own"
    if _refused is not None:
        return f"off: {_refused}"
    return "off"
