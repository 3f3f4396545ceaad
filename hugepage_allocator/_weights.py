"""Weights onto huge pages: to_hugepages(), and the ``move_weights`` setting that calls it after loads.

Loaders that map a file (safetensors, which transformers' from_pretrained uses, and
``torch.load(mmap=True)``) leave every weight a view of the file's mapping, on 4 KiB pages, where the
pool never sees it. to_hugepages() copies each storage into the pool, once per storage, and points
every tensor that viewed it at the copy (``Tensor.set_``): parameters and buffers stay the same
objects, with their dtype, shape, strides and ``requires_grad``, and tensors that shared a storage
(tied weights, views) still share one.

Memory during the move stays within one storage of the end state: storages move one at a time,
largest first, and as soon as nothing else holds the old storage, the pages this process mapped of
the file under it are dropped (MADV_DONTNEED), so the file's pages and their copies are not both
this process's memory (the file's pages stay in the page cache, the kernel's to reclaim or share
with other readers). The mapping itself goes when its loader lets go of it.

Where the copies go: onto 1 GiB pages while whole 1 GiB pages' worth of weights are left to place
(``page_sizes`` has 1G and the placement names one node), then where the allocator puts any tensor
of that size (``numa_policy`` decides the node). With ``fallback=False`` (what the setting uses),
only onto explicit huge pages: once none is free, the rest stays where the loader put it.

Note [Weights after a load]
With ``move_weights`` on (the default) two loading paths end with a move, because at that point the
loaded tensors have become a model's weights:
- transformers' ``PreTrainedModel.from_pretrained`` (it maps safetensors files and points the
  parameters at the mapping). transformers is not imported here: a finder on ``sys.meta_path``
  wraps the method when ``transformers.modeling_utils`` is first imported (at once if it already is).
- ``nn.Module.load_state_dict(..., assign=True)``: the parameters become the state dict's tensors,
  e.g. those of ``torch.load(mmap=True)`` or safetensors' ``load_file``. Without ``assign`` the
  values are copied into parameters the allocator already made, so they are on huge pages anyway.
A state dict that ``torch.load(mmap=True)``, ``load_file`` or ``safe_open`` returns is left on the
file: mapping it is what the caller asked for, and it may never be read whole.
"""
from __future__ import annotations

import bisect
import functools
import importlib.abc
import importlib.util
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import torch

_GiB = 1 << 30
_KIND_1G, _KIND_2M = 0, 1  # csrc/os.h PageKind
_EXPLICIT = (_KIND_1G, _KIND_2M)


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


def _movable(t: torch.Tensor) -> bool:
    # Plain tensors and Parameters only: a tensor subclass (quantized, DTensor, a wrapper) may keep
    # its data elsewhere than its storage, and set_() is not its interface.
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
            and t.layout == torch.strided and not t.is_quantized)


class _FileMappings:
    """This process's mappings of regular files, from /proc/self/maps (read once per move)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ranges: list[tuple[int, int]] = []
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) < 6 or fields[4] == "0":
                    continue  # anonymous
                path = fields[5].strip()
                if not path.startswith("/") or path.startswith(("/dev/", "/memfd:")):
                    continue  # shared memory, devices, hugetlb files: not a loader's file
                lo, hi = (int(a, 16) for a in fields[0].split("-"))
                self.starts.append(lo)
                self.ranges.append((lo, hi))

    def holds(self, address: int, nbytes: int) -> bool:
        i = bisect.bisect_right(self.starts, address) - 1
        return i >= 0 and self.ranges[i][0] <= address and address + nbytes <= self.ranges[i][1]


def _one_gib_node() -> int | None:
    """The node 1 GiB pages for weights come from, or None when the placement spreads memory over
    several nodes (then weights go where the allocator puts any tensor) or 1G is not in use."""
    from . import _api  # noqa: PLC0415

    values = _api.installed_settings()
    if values is None or "1G" not in values["page_sizes"]:
        return None
    mode, _, nodes = _api.placement().partition(":")
    if mode == "local":
        return -1
    if mode in ("preferred", "bind") and nodes.isdigit():
        return int(nodes)
    return None


def to_hugepages(obj: Any, progress: Callable[[int, int], None] | bool | None = None, *,
                 fallback: bool = True) -> Any:
    """Moves the CPU tensors of ``obj`` (an ``nn.Module``, or a state dict: nested dicts, lists and
    tuples of tensors) into the huge-page pool, in place, and returns ``obj``.

    Each storage is copied once and every tensor that viewed it is pointed at the copy: tied
    weights stay tied, views stay views, parameters keep ``requires_grad`` and dtype. Storages go
    largest first, onto 1 GiB pages while whole 1 GiB pages' worth are left (``page_sizes`` with
    1G), then where the installed allocator puts a tensor of their size. ``fallback=False``: only
    onto explicit huge pages; once none is free, the rest stays where it was. Left alone: storages
    already in the pool, shared-memory storages (``is_shared()``: other processes see them), tensor
    subclasses, and tensors that are not CPU strided tensors. ``progress``: a callable taking
    (bytes moved, bytes to move) after each storage, or True for a line on stderr per tenth. Needs
    ``install()`` first (RuntimeError otherwise).
    """
    from ._api import is_installed  # noqa: PLC0415

    if not is_installed():
        raise RuntimeError("hugepage_allocator.to_hugepages: call hugepage_allocator.install() first; "
                           "the tensors are moved into the pool it sets up")
    if progress is True:
        progress = _print_progress()
    _move(obj, progress or None, fallback)
    return obj


def _move(obj: Any, progress: Callable[[int, int], None] | None, fallback: bool) -> tuple[int, int]:
    """The move of to_hugepages(); returns (bytes moved, bytes left where they were)."""
    found: dict[int, torch.Tensor] = {}
    _walk(obj, found)
    native = _native()
    groups: dict[int, list[torch.Tensor]] = {}
    sizes: dict[int, int] = {}
    for t in found.values():
        if not _movable(t):
            continue
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0 or storage.is_shared() or native.block_size(storage.data_ptr()) > 0:
            continue
        key = storage._cdata  # one StorageImpl: tied weights and views of one storage
        groups.setdefault(key, []).append(t)
        sizes[key] = nbytes
    del found
    if not groups:
        return 0, 0
    total, moved = sum(sizes.values()), 0
    files = _FileMappings()
    node_1g = _one_gib_node()
    budget_1g = total // _GiB * _GiB if node_1g is not None else 0
    with torch.no_grad():
        for key in sorted(groups, key=sizes.get, reverse=True):
            nbytes = sizes[key]
            new = None
            if nbytes <= budget_1g:
                try:
                    new = native.empty_bytes(nbytes, _KIND_1G, node_1g).untyped_storage()
                    budget_1g -= nbytes
                except torch.OutOfMemoryError:
                    budget_1g = 0  # no free 1 GiB page left: the rest go to smaller pages
            if new is None:
                new = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
                if not fallback and native.page_kind_at(new.data_ptr()) not in _EXPLICIT:
                    continue  # no free explicit huge page for it (or below min_size): it stays
            tensors = groups.pop(key)
            old = tensors[0].untyped_storage()
            new.copy_(old)
            for t in tensors:
                t.set_(new, t.storage_offset(), t.size(), t.stride())
            del tensors, new
            # Ours alone now: the file's pages this process mapped under it are dropped at once
            # (the file mapping lives as long as its loader holds it, which may be until the end).
            if torch._C._storage_Use_Count(old._cdata) == 1 and files.holds(old.data_ptr(), nbytes):
                native.discard_pages(old.data_ptr(), nbytes)
            del old
            moved += nbytes
            if progress:
                progress(moved, total)
    return moved, total - moved


def _print_progress(after_seconds: float = 0.0) -> Callable[[int, int], None]:
    """A line on stderr per tenth moved; with ``after_seconds``, only once the move has taken that long."""
    shown, start = [-1], time.monotonic()

    def show(moved: int, total: int) -> None:
        tenth = moved * 10 // max(total, 1)
        if tenth != shown[0] and time.monotonic() - start >= after_seconds:
            shown[0] = tenth
            print(f"hugepage_allocator: {moved >> 20} of {total >> 20} MiB of weights on huge pages",
                  file=sys.stderr, flush=True)

    return show


# ---------------------------------------------------------------------------------------------
# The move_weights setting: Note [Weights after a load]

_lock = threading.Lock()
_enabled = False
_hooked = False
_warned = False
_TRANSFORMERS = "transformers.modeling_utils"


def enable(on: bool) -> None:
    """Turns the move after loads on or off (install() and uninstall() call this)."""
    global _enabled, _hooked
    with _lock:
        _enabled = on
        if on and not _hooked:
            _hooked = True
            _wrap_load_state_dict()
            if _TRANSFORMERS in sys.modules:
                _wrap_from_pretrained(sys.modules[_TRANSFORMERS])
            else:
                sys.meta_path.insert(0, _PatchOnImport(_TRANSFORMERS, _wrap_from_pretrained))


def _after_load(model: Any) -> None:
    """The setting's move: explicit huge pages only, a progress line if it takes seconds."""
    global _warned
    if not _enabled:
        return
    _, left = _move(model, _print_progress(after_seconds=2.0), fallback=False)
    if left and not _warned:
        _warned = True
        warnings.warn(f"hugepage_allocator: {left >> 20} MiB of weights stay where the loader put them: no "
                      f"free explicit huge page was left for them (python -m hugepage_allocator doctor "
                      f"tells how to reserve more; move_weights:false turns this move off)", stacklevel=3)


def _wrap_load_state_dict() -> None:
    original = torch.nn.Module.load_state_dict

    @functools.wraps(original)
    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = original(self, state_dict, strict=strict, assign=assign)
        if assign:
            _after_load(self)
        return result

    torch.nn.Module.load_state_dict = load_state_dict


def _wrap_from_pretrained(module: Any) -> None:
    cls = getattr(module, "PreTrainedModel", None)
    method = getattr(cls, "__dict__", {}).get("from_pretrained") if cls is not None else None
    if not isinstance(method, classmethod):
        warnings.warn("hugepage_allocator: this transformers has no PreTrainedModel.from_pretrained "
                      "classmethod; its weights are not moved onto huge pages after loading "
                      "(hugepage_allocator.to_hugepages(model) does it)", stacklevel=2)
        return
    original = method.__func__

    @functools.wraps(original)
    def from_pretrained(cls, *args, **kwargs):
        loaded = original(cls, *args, **kwargs)
        # output_loading_info=True returns (model, info)
        _after_load(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    cls.from_pretrained = classmethod(from_pretrained)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs `patch(module)` once the module `name` has been executed by its own loader."""

    def __init__(self, name: str, patch: Callable[[Any], None]) -> None:
        self.name, self.patch, self.busy = name, patch, False

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders' answer
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        sys.meta_path.remove(self)  # once
        spec.loader = _PatchingLoader(spec.loader, self.patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name):  # get_data, get_resource_reader, ...: the real loader's
        return getattr(self.loader, name)
