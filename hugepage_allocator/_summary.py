"""memory_summary(): the stats as a fixed-width table, laid out like torch.cuda.memory_summary()."""
from __future__ import annotations

from typing import Mapping

_WIDTH = 77  # the width of a row: a label column and four value columns


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _row(label: str, cells: list[str]) -> str:
    return f"| {label:<21} |" + "|".join(f" {c:>10} " for c in cells) + "|"


def format_summary(stats: Mapping[str, int], nodes: list[int], kinds: list[str], placement: str = "local") -> str:
    rule = "|" + "-" * (_WIDTH - 2) + "|"
    lines = [
        "|" + "=" * (_WIDTH - 2) + "|",
        "|" + " hugepage_allocator memory summary ".center(_WIDTH - 2) + "|",
        "|" + f" NUMA nodes: {','.join(map(str, nodes))}   placement: {placement} ".center(_WIDTH - 2) + "|",
        rule,
        _row("Metric", ["Cur Usage", "Peak Usage", "Tot Alloc", "Tot Freed"]),
        rule,
    ]
    node_pools = [f"node{n}" for n in nodes] + ["interleave"] if len(nodes) > 1 else []
    pools = ["all"] + kinds + node_pools
    for stat, title in (
        ("allocated_bytes", "Allocated memory"),
        ("requested_bytes", "Requested memory"),
        ("reserved_bytes", "Reserved memory"),
        ("shared_bytes", "Shared memory"),
    ):
        for pool in pools:
            keys = [f"{stat}.{pool}.{m}" for m in ("current", "peak", "allocated", "freed")]
            if not any(k in stats for k in keys):
                continue
            label = title if pool == "all" else f"      in {pool}"
            lines.append(_row(label, [_fmt_bytes(stats[k]) if k in stats else "-" for k in keys]))
        lines.append(rule)
    lines.append(_row("Events", ["all"] + kinds[:3]))
    lines.append(rule)
    for event, title in (
        ("num_allocs", "Spans handed out"),
        ("num_cache_hits", "  from mapped memory"),
        ("num_fallbacks", "  as a fallback"),
        ("num_maps", "Segments mapped"),
        ("num_unmaps", "Segments given back"),
        ("num_map_failures", "Growth refused"),
    ):
        cells = [str(stats[event])] + [str(stats[f"{event}.{k}"]) for k in kinds[:3]]
        lines.append(_row(title, cells))
    lines.append(rule)
    if node_pools:
        lines.append(_row("Per node", ["spans", "for others", "fallbacks", "refused"]))
        lines.append(rule)
        for pool in node_pools:
            events = ("num_allocs", "num_node_fallbacks", "num_fallbacks", "num_map_failures")
            lines.append(_row(f"  {pool}", [str(stats.get(f"{e}.{pool}", 0)) for e in events]))
        lines.append(rule)
    if stats.get("num_shared_maps", 0) or stats.get("num_shared_failures", 0):
        lines.append(_row("Shared regions", ["mapped", "reused", "fallbacks", "idle"]))
        lines.append(rule)
        lines.append(_row("  this process", [str(stats["num_shared_maps"]), str(stats["num_shared_reuses"]),
                                             str(stats["num_shared_fallbacks"]),
                                             _fmt_bytes(stats["shared_idle_bytes.all.current"])]))
        lines.append(rule)
    lines.append(_row("On ordinary pages", [str(stats["num_allocs.base"]), "", "", ""]))
    lines.append(_row("Out-of-memory errors", [str(stats["num_ooms"]), "", "", ""]))
    lines.append(_row("Below min_size", [str(stats["num_passthrough"]), "", "", ""]))
    lines.append("|" + "=" * (_WIDTH - 2) + "|")
    return "\n".join(lines)
