"""hugepage-run [options] -- COMMAND ...: run COMMAND (python, torchrun, ...) with the allocator on.

Sets HUGEPAGE_ALLOCATOR=1 (and HUGEPAGE_ALLOCATOR_CONF) in COMMAND's environment and execs it, so
every Python process it starts that imports torch installs the allocator, torchrun's workers and
spawned DataLoader workers included. --reserve sets up the kernel's pool first (root);
--bind-numa binds each local rank (LOCAL_RANK, as torchrun sets it) to one NUMA node's CPUs, so
that its memory comes from that node.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        ours, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    else:
        ours, command = [], argv
    ap = argparse.ArgumentParser(prog="hugepage-run", description=__doc__.splitlines()[0])
    ap.add_argument("--conf", help="settings: inline key:value,..., a preset name or a TOML file")
    ap.add_argument("--reserve", metavar="SIZE", help="first set the 2 MiB pool to hold SIZE (root)")
    ap.add_argument("--bind-numa", action="store_true", help="bind each local rank to a NUMA node")
    args = ap.parse_args(ours)
    if not command:
        ap.error("no COMMAND given: hugepage-run [options] -- COMMAND ...")
    if args.conf is not None:
        from ._errors import ConfigError  # noqa: PLC0415
        from ._settings import resolve  # noqa: PLC0415

        try:
            resolve(args.conf, environ={})
        except ConfigError as e:
            ap.error(f"--conf: {e}")
    if args.reserve is not None:
        from . import _reserve  # noqa: PLC0415

        rc = _reserve.main([args.reserve])
        if rc == 2:
            return rc
    env = dict(os.environ)
    env["HUGEPAGE_ALLOCATOR"] = "1"
    if args.conf is not None:
        env["HUGEPAGE_ALLOCATOR_CONF"] = args.conf
    if args.bind_numa:
        env["HUGEPAGE_ALLOCATOR_BIND_NUMA"] = "1"
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        print(f"hugepage-run: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
