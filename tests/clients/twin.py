"""Run one piece of client code twice, each time in a fresh interpreter: once on PyTorch's default
CPU allocator (HUGEPAGE_ALLOCATOR=0), once with HUGEPAGE_ALLOCATOR=1, which installs this allocator
at the end of `import torch` (in spawned and forkserver children too: they inherit the environment).

The code is written to a file and run as a script, `python client.py`, so that spawned and
forkserver children import its classes and functions the way they import a user's script (code
that starts processes keeps its main part under `if __name__ == "__main__":`). CLIENT_PRELUDE
above it defines a few helpers:

    report(**values)   hands JSON back to the test, with `installed` (hpa.is_installed()) and, in
                       the allocator run, `fallbacks` (requests that found no free explicit huge
                       page: Twin.both() requires none, so that every placement check is fair)
    digest(obj)        sha256 of the exact bytes, dtypes and shapes of the tensors in obj
    hexes(values)      floats as float.hex(): exact, comparable strings
    where(tensor)      where the kernel put the tensor's memory: "2M" / "1G" (explicit huge pages,
                       KernelPageSize in /proc/self/smaps), "thp" (AnonHugePages), "4K", "shm"
                       (a file of /dev/shm: torch's shared memory), "memfd" (this allocator's
                       shared memory on ordinary pages; on huge pages it is "2M"), "file:<path>"
                       (another file mapping, e.g. mmap=True loads); "none" for no memory
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALLOCATORS = {"default": {"HUGEPAGE_ALLOCATOR": "0"}, "hugepage": {"HUGEPAGE_ALLOCATOR": "1"}}

# No hub: nothing may be downloaded at run time.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

CLIENT_PRELUDE = '''\
import hashlib, json, os, sys
sys.path.insert(0, {tests_dir!r})
import torch
import kernel
import hugepage_allocator as hpa


def report(**values):
    values["installed"] = hpa.is_installed()
    if values["installed"]:   # requests that found no explicit huge page (a pool run dry)
        stats = hpa.memory_stats()
        values["fallbacks"] = stats["num_fallbacks.thp"] + stats["num_fallbacks.base"]
    print("RESULT " + json.dumps(values), flush=True)


def digest(obj):
    h = hashlib.sha256()
    def walk(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().contiguous()
            h.update(f"{{x.dtype}}{{tuple(x.shape)}}".encode())
            h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(repr(k).encode()); walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"[%d" % len(x)); [walk(v) for v in x]
        else:
            h.update(repr(x).encode())
    walk(obj)
    return h.hexdigest()


def hexes(values):
    return [float(v).hex() for v in values]


def _mapping_path(address):
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    return ""


def where(t):
    address = t.untyped_storage().data_ptr()
    if address == 0:
        return "none"
    m = kernel.mapping_of(address)
    if m.kernel_page_kb != 4:
        return {{2048: "2M", 1048576: "1G"}}.get(m.kernel_page_kb, f"{{m.kernel_page_kb}}K")
    path = _mapping_path(address)
    if path.startswith("/dev/shm/"):
        return "shm"
    if path.startswith("/memfd:hugepage-allocator"):
        return "memfd"
    if path.startswith("/"):
        return "file:" + path.replace(" (deleted)", "")
    return "thp" if m.anon_huge_kb > 0 else "4K"

'''


@dataclass
class Run:
    allocator: str
    returncode: int
    stdout: str
    stderr: str
    values: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.values[key]


class Twin:
    """Runs client code as a script in `directory`; the code is given in pieces (strings, each
    dedented on its own, joined in order)."""

    def __init__(self, directory) -> None:
        self.directory = str(directory)

    def write(self, name: str, code: tuple[str, ...], prelude: bool = True) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            if prelude:
                f.write(CLIENT_PRELUDE.format(tests_dir=TESTS_DIR))
            for piece in code:
                f.write(textwrap.dedent(piece))
        return path

    def run(self, *code: str, allocator: str, env: dict | None = None, timeout: float = 300,
            check: bool = True, prelude: bool = True) -> Run:
        """`allocator`: "default" or "hugepage" (the environment switch), or "install" (neither
        variable set to 1: the client calls hpa.install() itself)."""
        path = self.write(f"client_{allocator}.py", code, prelude)
        full_env = dict(os.environ)
        full_env.update(OFFLINE)
        full_env.update(ALLOCATORS.get(allocator, ALLOCATORS["default"]))
        full_env.update(env or {})
        # A session of its own, so that a run that hangs is killed with every process it started.
        proc = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=full_env, cwd=self.directory, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"the {allocator} run did not end within {timeout} s: killed\n"
                                 f"--- stdout\n{stdout[-6000:]}\n--- stderr\n{stderr[-6000:]}") from None
        run = Run(allocator, proc.returncode, stdout, stderr)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        if lines:
            run.values = json.loads(lines[-1][len("RESULT "):])
        if check and (proc.returncode != 0 or not lines):
            raise AssertionError(f"the {allocator} run failed with {proc.returncode}\n"
                                 f"--- stdout\n{stdout[-6000:]}\n--- stderr\n{stderr[-6000:]}")
        return run

    def both(self, *code: str, env: dict | None = None, timeout: float = 300) -> tuple[Run, Run]:
        """The default run, then the allocator's; each has really run on the allocator it names."""
        default = self.run(*code, allocator="default", env=env, timeout=timeout)
        ours = self.run(*code, allocator="hugepage", env=env, timeout=timeout)
        assert default["installed"] is False
        assert ours["installed"] is True, "the allocator run did not install the allocator"
        assert ours["fallbacks"] == 0, (f"{ours['fallbacks']} requests of the allocator run found no "
                                        "free explicit huge page (did another process take them?)")
        return default, ours
