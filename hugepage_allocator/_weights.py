"""Weights onto huge pages: to_hugepages() moves the tensors of a module or a state dict into the pool.

Loaders that map a file (safetensors, which transformers' from_pretrained uses, and
``torch.load(mmap=True)``) leave every weight a view of the file's mapping, on 4 KiB pages, where the
pool never sees it. to_hugepages() copies each storage into the pool, once per storage, and points
every tensor that viewed it at the copy (``Tensor.set_``): parameters and buffers stay the same
objects, with their dtype, shape, strides and ``requires_grad``, and tensors that shared a storage
(tied weights, views) still share one. The old storage is dropped as soon as its tensors are moved,
so a file mapping is unmapped once its last tensor has moved.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch


def _native():
    from . import _C  # noqa: PLC0415

    return _C


def _walk(obj: Any, out: dict[int, torch.Tensor]) -> None:
    """Every tensor of a module (parameters and buffers), or inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.nn.Module):
        for t in obj.parameters():
            out.setdefault(id(t), t)
        for t in obj.buffers():
            out.setdefault(id(t), t)
    elif isinstance(obj, torch.Tensor):
        out.setdefault(id(obj), obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _walk(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, out)


def to_hugepages(obj: Any, progress: Callable[[int, int], None] | bool | None = None) -> Any:
    """Moves the CPU tensors of ``obj`` (an ``nn.Module``, or a state dict: nested dicts, lists and
    tuples of tensors) into the huge-page pool, in place, and returns ``obj``.

    Each storage is copied once, into memory the installed allocator gives (explicit huge pages, as
    ``install()``'s settings say), and every tensor that viewed it is pointed at the copy: tied
    weights stay tied, views stay views, parameters keep ``requires_grad``. Storages already in
    the pool, shared-memory storages (``is_shared()``: other processes see them) and tensors that
    are not CPU strided tensors are left alone. ``progress``: a callable taking (bytes moved, bytes
    to move) after each storage, or True for a line on stderr per tenth. Needs ``install()`` first
    (RuntimeError otherwise).
    """
    from ._api import is_installed  # noqa: PLC0415

    if not is_installed():
        raise RuntimeError("hugepage_allocator.to_hugepages: call hugepage_allocator.install() first; "
                           "the tensors are moved into the pool it sets up")
    if progress is True:
        progress = _print_progress()
    found: dict[int, torch.Tensor] = {}
    _walk(obj, found)
    native = _native()
    groups: dict[int, list[torch.Tensor]] = {}
    sizes: dict[int, int] = {}
    for t in found.values():
        if t.device.type != "cpu" or t.layout != torch.strided:
            continue
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0 or storage.is_shared() or native.block_size(storage.data_ptr()) > 0:
            continue
        key = storage._cdata  # one StorageImpl: tied weights and views of one storage
        groups.setdefault(key, []).append(t)
        sizes[key] = nbytes
    total, moved = sum(sizes.values()), 0
    del found
    with torch.no_grad():
        for key in list(groups):
            tensors = groups.pop(key)
            new = torch.empty(sizes[key], dtype=torch.uint8).untyped_storage()
            new.copy_(tensors[0].untyped_storage())
            for t in tensors:
                t.set_(new, t.storage_offset(), t.size(), t.stride())
            del tensors, new  # the old storage goes with its last tensor
            moved += sizes[key]
            if progress:
                progress(moved, total)
    return obj


def _print_progress() -> Callable[[int, int], None]:
    import sys  # noqa: PLC0415

    shown = [-1]

    def show(moved: int, total: int) -> None:
        tenth = moved * 10 // max(total, 1)
        if tenth != shown[0]:
            shown[0] = tenth
            print(f"hugepage_allocator: {moved >> 20} of {total >> 20} MiB of weights on huge pages",
                  file=sys.stderr, flush=True)

    return show
