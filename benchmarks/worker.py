"""One allocator's process: sets a workload up, then runs rounds when asked.

    python benchmarks/worker.py GROUP [CASE] [--quick]

The allocator is whatever this process's environment selects (LD_PRELOAD, GLIBC_TUNABLES,
MALLOC_CONF, THP_MEM_ALLOC_ENABLE, HUGEPAGE_ALLOCATOR). The protocol runs over stdin and the
original stdout, one JSON object a line: the worker first sends {"ready": info}; then each
{"op": "round", "case": NAME} gets the round's measures back, and {"op": "finish"} gets the
workload's closing facts, after which the worker exits. Anything else the process prints goes to
stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# workloads, and the tests' native module hpa_testing (the hot-path timers; ./run builds it).
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests", "native")]
import workloads  # noqa: E402


def _loaded(fragment: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(fragment in line for line in f)


def describe() -> dict:
    """What serves this process's allocations, as the process itself sees it."""
    import torch

    info = {"torch": torch.__version__}
    preload = os.environ.get("LD_PRELOAD")
    if preload:
        info["preloaded"] = _loaded(os.path.basename(preload))
        if not info["preloaded"]:
            raise RuntimeError(f"LD_PRELOAD={preload} is not mapped into the worker")
    if os.environ.get("HUGEPAGE_ALLOCATOR") == "1":
        import hugepage_allocator

        info["hugepage_allocator_installed"] = hugepage_allocator.is_installed()
        if not info["hugepage_allocator_installed"]:
            raise RuntimeError("HUGEPAGE_ALLOCATOR=1 but the allocator is not installed")
    return info


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("group", choices=sorted(workloads.GROUPS))
    p.add_argument("case", nargs="?")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (warnings, libraries) must not corrupt the protocol

    def send(obj) -> None:
        proto.write(json.dumps(obj) + "\n")

    work = workloads.GROUPS[args.group](args.quick)
    info = describe()
    info.update(work.setup(args.case))
    import torch

    info["threads"] = torch.get_num_threads()
    send({"ready": info})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "round":
            send(work.run(cmd["case"]))
        elif cmd["op"] == "finish":
            send(work.finish())
            break
        else:
            raise ValueError(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()
