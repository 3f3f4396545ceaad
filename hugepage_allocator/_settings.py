"""Settings of the allocator: one table that drives parsing, validation, errors and the docs.

Settings come from keyword arguments of ``install()``, from the environment variable
HUGEPAGE_ALLOCATOR_CONF and from ``install()``'s ``config`` argument; the last two are each a
dict (``config`` only), an inline string in PyTorch's allocator-config grammar
(``key:value,key:[a,b]``, as in ``PYTORCH_ALLOC_CONF``) or the path of a TOML file. Keyword
arguments win over the environment, which wins over ``config``, which wins over the defaults.
Every bad value raises ``ConfigError`` naming the setting and what is allowed.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(?:([KMGT])(?:i?B)?|B)?\s*$", re.IGNORECASE | re.ASCII)
MAX_SIZE = 1 << 62


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``512MB``, ``2GB``, ``4KiB`` (K, M, G, T are powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size (examples: 1048576, 512KB, 64MB, 2GB)")
        n = int(m.group(1)) * _UNITS[(m.group(2) or "").upper()]
    else:
        raise ValueError(f"a size (an int or a string like '64MB'), not {type(value).__name__}")
    if n < 0 or n > MAX_SIZE:
        raise ValueError(f"{n} is out of range (0 to 2**62 bytes)")
    return n


def _size_or_unlimited(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("unlimited", "none")):
        return None
    return parse_size(value)


def _choices(allowed: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"a list of values from {list(allowed)}, not {type(value).__name__}")
        out = []
        for item in value:
            if not isinstance(item, str) or item.strip() not in allowed:
                raise ValueError(f"{item!r} is not one of {list(allowed)}")
            if item.strip() not in out:
                out.append(item.strip())
        return tuple(out)

    return parse


def parse_bool(value: Any) -> bool:
    """A boolean from True/False, 1/0 or the words true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
    raise ValueError(f"{value!r} is not a boolean")


def _size_at_least(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        n = parse_size(value)
        if n < minimum:
            raise ValueError(f"{n} is below the minimum of {minimum} bytes")
        return n

    return parse


_NUMA_MODES = ("local", "preferred", "bind", "interleave")  # numbered as csrc/placement.h NumaMode
_NODE_LIST_RE = re.compile(r"^\s*[0-9]+(\s*-\s*[0-9]+)?(\s*[,+]\s*[0-9]+(\s*-\s*[0-9]+)?)*\s*$", re.ASCII)


def parse_node_list(text: str) -> tuple[int, ...]:
    """Node ids from a list such as ``1``, ``0-3``, ``0,2`` or ``0+2`` (``+`` where a comma cannot go)."""
    if not _NODE_LIST_RE.match(text):
        raise ValueError(f"{text!r} is not a node list (examples: 1, 0-3, 0+2)")
    nodes: set[int] = set()
    for part in re.split(r"[,+]", text):
        lo, _, hi = part.strip().partition("-")
        first, last = int(lo), int(hi) if hi else int(lo)
        if last < first:
            raise ValueError(f"{part.strip()!r} is an empty range")
        if last > 63:
            raise ValueError(f"node {last} is beyond the 64 nodes supported (0-63)")
        nodes.update(range(first, last + 1))
    return tuple(sorted(nodes))


def parse_numa_policy(value: Any) -> tuple[str, tuple[int, ...]] | None:
    """(mode, nodes) from ``local``, ``interleave[:NODES]``, ``bind:NODES`` or ``preferred:NODE``;
    None for ``auto`` (the process's memory policy decides). An empty node tuple means every node."""
    if not isinstance(value, str):
        raise ValueError(f"a string such as 'local' or 'bind:1', not {type(value).__name__}")
    mode, sep, nodes_text = value.strip().partition(":")
    mode = mode.strip().lower()
    if mode == "auto" and not sep:
        return None
    if mode not in _NUMA_MODES:
        raise ValueError(f"{value!r} names no placement mode ({', '.join(_NUMA_MODES)}, auto)")
    if mode == "local":
        if sep:
            raise ValueError("local takes no nodes (it is the calling CPU's node)")
        return ("local", ())
    if not sep:
        if mode == "interleave":
            return ("interleave", ())
        raise ValueError(f"{mode} needs nodes, e.g. '{mode}:1'")
    nodes = parse_node_list(nodes_text)
    if mode == "preferred" and len(nodes) != 1:
        raise ValueError(f"preferred takes one node, not {nodes_text.strip()!r}")
    return (mode, nodes)


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    allowed: str  # what is allowed, in words, for errors and docs
    doc: str
    parse: Callable[[Any], Any]
    shown_default: str | None = None  # the default in the docs, when the value is not self-explaining


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "page_sizes", ("2M", "1G"), "a list of 2M, 1G",
        "Explicit (hugetlb) page sizes to use. Requests of at least huge_1g_min_size try 1G "
        "pages first, then 2M.",
        _choices(("2M", "1G")),
    ),
    Setting(
        "fallback", ("thp", "base"), "a list of thp, base (tried in that order)",
        "What serves a request when no explicit huge page can: transparent huge pages, then "
        "ordinary pages. An empty list makes an empty hugetlb pool an out-of-memory error.",
        _choices(("thp", "base")),
    ),
    Setting(
        "min_size", 0, "a size from 0 to 2**62 bytes",
        "Requests smaller than this are served by the allocator that was current before "
        "install() (PyTorch's default) instead of the huge-page pool.",
        parse_size,
    ),
    Setting(
        "huge_1g_min_size", 1 << 30, "a size of at least 2MB",
        "Requests at least this large are placed on 1 GiB pages when page_sizes has 1G and the "
        "kernel has free 1 GiB pages.",
        _size_at_least(2 << 20),
    ),
    Setting(
        "prefault", 0, "a size from 0 to 2**62 bytes",
        "Bytes of huge pages taken and faulted in at install() and kept cached, so that the first "
        "requests pay no page faults (with max_cached at least as large).",
        parse_size,
    ),
    Setting(
        "max_cached", None, "a size, or unlimited",
        "Idle (free but mapped) memory kept for reuse. When a free leaves a whole segment idle "
        "and the pool holds more idle memory than this, the segment goes back to the kernel at "
        "once; with a limit set, threads keep no large blocks of their own (only small objects). "
        "empty_cache() gives back every idle segment whatever this says.",
        _size_or_unlimited,
    ),
    Setting(
        "numa_policy", None,
        "local, interleave, interleave:NODES, bind:NODES, preferred:NODE, auto (NODES: 1, 0-3, 0+2)",
        "Where on the NUMA nodes memory goes. local: the calling CPU's node; when its explicit huge "
        "pages run out, other nodes' huge pages come before THP and ordinary pages. bind: only "
        "these nodes, ever (fallback pages are bound to them too). preferred: this node first, "
        "then as local. interleave: tensors above 256 KiB spread page by page over the nodes (for "
        "weights every socket reads); smaller ones stay local. Unset (auto), the process's memory "
        "policy decides: numactl --membind, --interleave and --preferred are followed; else local.",
        parse_numa_policy,
        shown_default="auto (local)",
    ),
    Setting(
        "shared_memory", True, "true or false",
        "Shared CPU memory on huge pages too: the batches DataLoader workers collate, "
        "share_memory_() and tensors sent through torch.multiprocessing queues go to memory files "
        "(memfd) of explicit huge pages, passed between processes as file descriptors, instead of "
        "/dev/shm on 4 KiB pages; regions are reused batch after batch. Only under PyTorch's "
        "file_descriptor sharing strategy (the default); false leaves shared memory to PyTorch.",
        parse_bool,
    ),
    Setting(
        "max_shared_cached", 1 << 30, "a size from 0 to 2**62 bytes",
        "Idle shared regions each process keeps mapped for the next batch of the same size (its "
        "own, and those other processes sent it). Beyond, the oldest are unmapped; empty_cache() "
        "unmaps them all.",
        parse_size,
    ),
    Setting(
        "move_weights", True, "true or false",
        "Model weights a loader left on a file mapping (safetensors, torch.load(mmap=True)) move "
        "onto free explicit huge pages when transformers' from_pretrained returns and after "
        "load_state_dict(..., assign=True): 1 GiB pages while whole GiBs of weights are left, then "
        "2 MiB. Weights no free explicit huge page can hold stay on the file; so does a state dict "
        "nothing has loaded into a model. false: weights stay where the loader put them "
        "(to_hugepages() still moves them).",
        parse_bool,
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def _unknown(name: Any) -> ConfigError:
    import difflib

    if not isinstance(name, str):
        return ConfigError(f"setting names are strings, not {name!r}; known settings: {', '.join(_BY_NAME)}")
    close = difflib.get_close_matches(name, _BY_NAME, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown setting {name!r}{hint}; known settings: {', '.join(_BY_NAME)}")


def parse_inline(text: str) -> dict[str, Any]:
    """Parses ``key:value,key:[a,b]`` into a dict of raw (unvalidated) values."""
    out: dict[str, Any] = {}
    i, n = 0, len(text)
    while i < n:
        j = text.find(":", i)
        if j < 0:
            raise ConfigError(f"malformed setting {text[i:].strip()!r} in {text!r}: expected key:value")
        key = text[i:j].strip()
        if not key:
            raise ConfigError(f"empty setting name in {text!r}")
        i = j + 1
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "[":
            end = text.find("]", i)
            if end < 0:
                raise ConfigError(f"unclosed '[' in the value of {key!r} in {text!r}")
            body = text[i + 1 : end].strip()
            value: Any = [v.strip() for v in body.split(",")] if body else []
            i = end + 1
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] != ",":
                raise ConfigError(f"expected ',' after the value of {key!r} in {text!r}")
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        if key in out:
            raise ConfigError(f"setting {key!r} given twice in {text!r}")
        out[key] = value
        i += 1  # the comma
    return out


PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_PRESET_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def presets() -> list[str]:
    """Names of the presets shipped in configs/ (install(config=NAME))."""
    return sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".toml"))


def _load(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(f"config must be a dict, an inline 'key:value,...' string, a preset name or a "
                          f"TOML file path, not {type(config).__name__}")
    text = os.fspath(config)
    if "\x00" in text:
        raise ConfigError(f"config {text!r} has a NUL character: it is neither settings nor a file path")
    if _PRESET_RE.match(text) and not os.path.exists(text):
        if text not in presets():
            raise ConfigError(f"config {text!r} is neither a preset ({', '.join(presets())}) nor a file")
        text = os.path.join(PRESETS_DIR, text + ".toml")
    if ":" not in text or text.endswith(".toml") or os.path.sep in text:
        try:
            with open(text, "rb") as f:
                return tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {text!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {text!r} is not valid TOML: {e}") from None
    return parse_inline(text)


ENV_CONF = "HUGEPAGE_ALLOCATOR_CONF"


def resolve(config: Any = None, overrides: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Validated settings: defaults < ``config`` < HUGEPAGE_ALLOCATOR_CONF < ``overrides``.

    ``environ`` is the environment to read (os.environ when None).
    """
    raw = _load(config)
    origin: dict[str, str] = {}  # where a value came from, for its error: the environment
    env_text = (os.environ if environ is None else environ).get(ENV_CONF, "").strip()
    if env_text:
        try:
            from_env = _load(env_text)
        except ConfigError as e:
            raise ConfigError(f"{ENV_CONF}={env_text!r}: {e}") from None
        raw.update(from_env)
        origin = dict.fromkeys(from_env, f"{ENV_CONF}={env_text!r}: ")
    for name in overrides or {}:
        origin.pop(name, None)
    raw.update(overrides or {})
    values = {s.name: s.default for s in SETTINGS}
    for name, value in raw.items():
        setting = _BY_NAME.get(name) if isinstance(name, str) else None
        if setting is None:
            error = _unknown(name)
            raise ConfigError(f"{origin.get(name, '')}{error}") from None
        try:
            values[name] = setting.parse(value)
        except ValueError as e:
            raise ConfigError(f"{origin.get(name, '')}bad value for setting {name!r}: {e}; "
                              f"allowed: {setting.allowed}") from None
    if values["max_cached"] is not None and values["prefault"] > values["max_cached"]:
        raise ConfigError(f"prefault ({values['prefault']} bytes) is more than max_cached "
                          f"({values['max_cached']} bytes) keeps: it would be given back at once")
    if not values["page_sizes"] and not values["fallback"]:
        raise ConfigError("page_sizes and fallback are both empty: no page kind is left to serve requests")
    if values["page_sizes"] == ("1G",) and not values["fallback"]:
        raise ConfigError("page_sizes [1G] with an empty fallback leaves requests below "
                          "huge_1g_min_size nowhere to go; add 2M to page_sizes or a fallback")
    return values


def markdown_table() -> str:
    """The settings table of the README, generated from SETTINGS."""

    def show(value: Any) -> str:
        if value is None:
            return "unlimited"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return "[" + ", ".join(value) + "]"
        if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
            return f"{value >> 30}GB" if value % (1 << 30) == 0 else f"{value >> 20}MB"
        return str(value)

    rows = ["| setting | default | allowed | what it does |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | `{s.shown_default or show(s.default)}` | {s.allowed} | {s.doc} |"
             for s in SETTINGS]
    return "\n".join(rows)
