"""The report of one run: per workload a table of medians with ratios against the default allocator
and a chart, the aims checked against the figures, and the machine they were measured on."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess

import allocators
import workloads

RATIO_NOTE = ("Ratios compare with PyTorch's default allocator (`default`): for times, the default's median "
              "divided by this one's, so 2.00x is twice as fast (for steps/s, this one's over the default's); "
              "for page faults, this one's count over the default's.")


# ---------------------------------------------------------------------------------------------
# The machine

def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict:
    """The machine and its huge page set-up, as found at the start of the run."""
    lscpu = {}
    for line in _run("lscpu").splitlines():
        k, _, v = line.partition(":")
        lscpu[k.strip()] = v.strip()
    meminfo = dict(line.split(":", 1) for line in _read("/proc/meminfo").splitlines() if ":" in line)
    pools = {}
    for size in ("2M", "1G"):
        nr = allocators.pool_count(size, "nr_hugepages")
        free = allocators.pool_count(size, "free_hugepages")
        pools[size] = f"{nr} pages, {free} free"
    nodes = [d for d in os.listdir("/sys/devices/system/node") if d.startswith("node")] \
        if os.path.isdir("/sys/devices/system/node") else []
    return {
        "CPU": f"{lscpu.get('Model name', platform.processor())}, {os.cpu_count()} CPUs"
               + (f", L2 {lscpu['L2 cache']}" if "L2 cache" in lscpu else "")
               + (f", L3 {lscpu['L3 cache']}" if "L3 cache" in lscpu else ""),
        "virtualization": lscpu.get("Hypervisor vendor", "none reported") + " guest"
        if "Hypervisor vendor" in lscpu else "none reported",
        "memory": meminfo.get("MemTotal", "?").strip() + f", {len(nodes) or 1} NUMA node(s)",
        "kernel": platform.release(),
        "THP": f"enabled {_bracketed('enabled')}, defrag {_bracketed('defrag')}",
        "hugetlb pools at start": f"2 MiB: {pools['2M']}; 1 GiB: {pools['1G']}",
        "huge page reservations": "each hugetlb configuration's worker reserves what it needs while it runs"
        if allocators.can_reserve() else "none (not root): hugetlb configurations use what is free",
        "glibc": os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else "?",
        "python": platform.python_version(),
        "libraries": ", ".join(f"{k} {allocators.package_version(k)}" for k in allocators.DEBIAN_PACKAGES),
        "commit": _run("git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _bracketed(knob: str) -> str:
    text = _read(f"/sys/kernel/mm/transparent_hugepage/{knob}")
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text or "?"


# ---------------------------------------------------------------------------------------------
# Figures

def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def better(metric: workloads.Metric, value: float, base: float) -> float:
    """How many times better than the baseline (> 1 is better); inf when value is 0 faults."""
    if metric.higher_is_better:
        return value / base if base else math.inf
    return base / value if value else math.inf


def ratio_text(metric: workloads.Metric, value: float, base: float) -> str:
    if metric.kind == "count":
        if base == 0:
            return "" if value == 0 else "(more)"
        if value == 0:
            return "(none)"
        r = value / base
        return f"(1/{base / value:,.0f})" if r < 0.5 else f"({r:.2f}x)"
    return f"({better(metric, value, base):.2f}x)"


def _columns(work: workloads.Workload):
    """(header, case, metric, statistic) of each column of the workload's table."""
    cols = []
    for c in work.cases:
        for m in c.metrics:
            prefix = f"{c.name}: " if len(work.cases) > 1 else ""
            if _shared_label(work):
                cols.append((c.name, c, m, "median"))
                continue
            if getattr(work, "percentiles", False) and m.kind == "time":
                cols += [(f"p50 {m.label}", c, m, "p50"), (f"p99 {m.label}", c, m, "p99"),
                         (f"first request, {m.label}", c, m, "first")]
            elif getattr(work, "percentiles", False):
                cols += [(f"first request, {m.label}", c, m, "first"), (f"median {m.label}", c, m, "median")]
            else:
                cols.append((prefix + m.label, c, m, "median"))
    return cols


def _shared_label(work: workloads.Workload) -> str | None:
    """The one metric label of a workload whose cases each measure just that, else None."""
    labels = {m.label for c in work.cases for m in c.metrics}
    if len(work.cases) > 1 and all(len(c.metrics) == 1 for c in work.cases) and len(labels) == 1:
        return labels.pop()
    return None


# Facts a workload reports of how the kernel backs its data, shown as the table's last column (the
# first key any configuration reported).
PAGE_KEYS = ("table pages", "weights pages", "pages")


def table(results, group: str, quick: bool) -> list[list[str]]:
    work = workloads.GROUPS[group](quick)
    data = results.data.get(group, {})
    cols = _columns(work)
    page_key = next((k for k in PAGE_KEYS if any(k in i for i in results.info.get(group, {}).values())), None)
    rows = [["allocator"] + [h for h, *_ in cols] + (["kernel pages"] if page_key else [])]
    for a in allocators.for_workload(group):
        if not any(a.name in data.get(c.name, {}) for c in work.cases):
            continue
        row = [a.name]
        for _, c, m, stat in cols:
            mine = data.get(c.name, {}).get(a.name)
            base = data.get(c.name, {}).get(allocators.BASELINE)
            if mine is None:
                row.append("")
                continue
            v = mine[m.key][stat]
            cell = fmt(v)
            if base is not None and a.name != allocators.BASELINE:
                cell += " " + ratio_text(m, v, base[m.key][stat])
            row.append(cell)
        if page_key:
            row.append(results.info.get(group, {}).get(a.name, {}).get(page_key, ""))
        rows.append(row)
    return rows


# The many-threads workload: a row per (size, mode, allocator), a column per thread count, each
# figure beside the same allocator's at one thread.

def _threads_data(results, quick: bool):
    work = workloads.GROUPS["threads"](quick)
    data = results.data.get("threads", {})
    by = {}  # (size, mode) -> allocator -> threads -> {metric: median}
    for c in work.cases:
        size, mode, threads = work.parse(c.name)
        for alloc, per in data.get(c.name, {}).items():
            by.setdefault((size, mode), {}).setdefault(alloc, {})[threads] = {k: v["median"] for k, v in per.items()}
    return work, by


def _millions(v: float) -> str:
    return f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def threads_table(results, quick: bool, key: str) -> list[list[str]]:
    """pairs_per_s: pairs/s (x the same allocator at one thread); pair_ns: ns per pair in the allocator (x)."""
    work, by = _threads_data(results, quick)
    rows = [["size, frees", "allocator"] + [f"{t} thread{'s' if t > 1 else ''}" for t in work.THREADS]]
    for (size, mode), allocs in by.items():
        for a in allocators.for_workload("threads"):
            if a.name not in allocs:
                continue
            per = allocs[a.name]
            one = per.get(1, {}).get(key)
            row = [f"{size} ({_human(work.SIZES[size])}), {mode}-thread", a.name]
            for t in work.THREADS:
                v = per.get(t, {}).get(key)
                if v is None:
                    row.append("")
                    continue
                cell = _millions(v) if key == "pairs_per_s" else fmt(v)
                if one and t > 1:
                    cell += f" ({v / one:.2f}x)"
                row.append(cell)
            rows.append(row)
    return rows


def _human(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def threads_chart(results, quick: bool, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work, by = _threads_data(results, quick)
    if not by:
        return
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    others = iter(["tab:orange", "tab:blue", "tab:purple", "tab:red", "tab:brown", "tab:olive", "tab:cyan"])
    colors = {a.name: "tab:green" if a.name.startswith("hpa") else "0.45" if a.name == allocators.BASELINE
              else next(others) for a in allocators.for_workload("threads")}
    for ax, ((size, mode), allocs) in zip(axes.flat, by.items()):
        for a in allocators.for_workload("threads"):
            per = allocs.get(a.name)
            if not per:
                continue
            ts = [t for t in work.THREADS if t in per]
            style = dict(linewidth=2.5) if a.name.startswith("hpa") else \
                dict(linewidth=1.2, linestyle="--") if a.name == allocators.BASELINE else dict(linewidth=1.2)
            style["color"] = colors[a.name]
            ax.plot(ts, [per[t]["pairs_per_s"] / 1e6 for t in ts], marker="o", label=a.name, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(work.THREADS), [str(t) for t in work.THREADS])
        ax.set_ylim(bottom=0)
        ax.set_title(f"{size} ({_human(work.SIZES[size])}), {mode}-thread frees", fontsize=10)
        ax.set_xlabel("threads", fontsize=9)
        ax.set_ylabel("million pairs / s", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{work.title}{' (quick)' if quick else ''}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# The summary: one column per workload's headline figure.
SUMMARY = [
    ("threads", "small cross 16T", "pairs_per_s", "median", "16 threads, 1 KiB: pairs/s"),
    ("threads", "large cross 16T", "pairs_per_s", "median", "16 threads, 1 MiB: pairs/s"),
    ("churn", "step", "ms", "median", "churn: ms/step"),
    ("churn", "step", "faults", "median", "churn: faults/step"),
    ("first_touch", "fresh tensor", "ms", "median", "first touch: ms"),
    ("gather", "index_select", "ms", "median", "index_select: ms"),
    ("gather", "EmbeddingBag sum", "ms", "median", "EmbeddingBag: ms"),
    ("training", "recommendation", "steps_per_s", "median", "recsys: steps/s"),
    ("training", "transformer", "steps_per_s", "median", "transformer: steps/s"),
    ("inference", "request", "ms", "p50", "inference p50: ms"),
    ("inference", "request", "ms", "p99", "inference p99: ms"),
    ("dataloader", "image batches", "batches_per_s", "median", "DataLoader: batches/s"),
    ("dataloader", "image batches", "faults_main", "median", "DataLoader: faults/batch"),
    ("generate", "GPT-2 355M", "tok_s_b1", "median", "GPT-2 355M: tokens/s"),
    ("generate", "GPT-2 355M", "ready_s", "median", "GPT-2 355M: load + 4 tokens s"),
]


def summary(results, quick: bool) -> list[list[str]]:
    cols = []
    for group, case, key, stat, header in SUMMARY:
        by = results.data.get(group, {}).get(case)
        if by:
            metric = next(m for c in workloads.GROUPS[group].cases if c.name == case for m in c.metrics if m.key == key)
            cols.append((by, metric, stat, header))
    rows = [["allocator"] + [h for *_, h in cols]]
    for a in allocators.ALLOCATORS:
        if not any(a.name in by for by, *_ in cols):
            continue
        row = [a.name]
        for by, m, stat, _ in cols:
            if a.name not in by:
                row.append("")
                continue
            v = by[a.name][m.key][stat]
            base = by.get(allocators.BASELINE)
            row.append(fmt(v) + (" " + ratio_text(m, v, base[m.key][stat])
                                 if base is not None and a.name != allocators.BASELINE else ""))
        rows.append(row)
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def text_tables(results, quick: bool):
    for group in workloads.GROUPS:
        if group == "threads" and group in results.data:
            work = workloads.GROUPS[group](quick)
            yield work.title + ": pairs/s", plain_table(threads_table(results, quick, "pairs_per_s"))
            yield work.title + ": ns per pair in the allocator", plain_table(threads_table(results, quick, "pair_ns"))
        elif group in results.data:
            work = workloads.GROUPS[group](quick)
            yield work.title, plain_table(table(results, group, quick))


# ---------------------------------------------------------------------------------------------
# Aims: what the figures should show, checked

def _median(results, group, case, alloc, key, stat="median"):
    try:
        return results.data[group][case][alloc][key][stat]
    except KeyError:
        return None


def aims(results) -> list[tuple[str, str]]:
    """(aim, what this run measured) pairs; an aim whose figures are missing is left out."""
    out = []
    r = lambda *a: _median(results, *a)  # noqa: E731
    thp = ("torch-thp", "glibc-thp", "jemalloc-thp")
    d_ms, d_f = r("churn", "step", "default", "ms"), r("churn", "step", "default", "faults")
    for hpa in ("hpa-2M", "hpa-1G"):
        ms, f = r("churn", "step", hpa, "ms"), r("churn", "step", hpa, "faults")
        if None in (ms, f, d_ms, d_f):
            continue
        out.append((f"churn, {hpa}: page faults at most 1/1000 of the default's",
                    _verdict(f * 1000 <= d_f, f"{fmt(f)} vs {fmt(d_f)}")))
        out.append((f"churn, {hpa}: at least 3x faster than the default", _verdict(d_ms / ms >= 3, f"{d_ms / ms:.2f}x")))
        for other in thp:
            o = r("churn", "step", other, "ms")
            if o is not None:
                out.append((f"churn, {hpa}: at least 1.5x faster than {other}", _verdict(o / ms >= 1.5, f"{o / ms:.2f}x")))
        t = r("churn", "step", "tcmalloc", "ms")
        if t is not None:
            out.append((f"churn, {hpa}: no slower than tcmalloc", _verdict(ms <= t, f"{t / ms:.2f}x")))
    for case in ("index_select", "EmbeddingBag sum"):
        d = r("gather", case, "default", "ms")
        for hpa in ("hpa-2M", "hpa-1G"):
            ms = r("gather", case, hpa, "ms")
            if None in (ms, d):
                continue
            out.append((f"gather {case}, {hpa}: at least 1.4x faster than the default",
                        _verdict(d / ms >= 1.4, f"{d / ms:.2f}x")))
            thps = [(r("gather", case, o, "ms"), o) for o in thp if r("gather", case, o, "ms") is not None]
            if thps:
                best = min(thps)
                out.append((f"gather {case}, {hpa}: no slower than THP (best: {best[1]})",
                            _verdict(ms <= best[0], f"{best[0] / ms:.2f}x")))
    d = r("first_touch", "fresh tensor", "default", "ms")
    for hpa in ("hpa-2M", "hpa-1G"):
        ms = r("first_touch", "fresh tensor", hpa, "ms")
        if None not in (ms, d):
            out.append((f"first touch, {hpa}: at least 2x faster than 4 KiB pages", _verdict(d / ms >= 2, f"{d / ms:.2f}x")))
    f = r("first_touch", "fresh tensor", "hpa-2M-prefault", "faults")
    if f is not None:
        out.append(("first touch, hpa-2M-prefault: no page faults", _verdict(f == 0, f"{fmt(f)} faults")))
    for case in ("recommendation", "transformer"):
        by = {a: v for a in allocators.BY_NAME if (v := r("training", case, a, "steps_per_s")) is not None}
        for hpa in ("hpa-2M", "hpa-1G"):
            if hpa not in by:
                continue
            others = {a: v for a, v in by.items() if not a.startswith("hpa")}
            if not others:
                continue
            best = max(others, key=others.get)
            out.append((f"training {case}, {hpa}: faster than every other allocator (best other: {best})",
                        _verdict(by[hpa] > others[best], f"{by[hpa] / others[best]:.2f}x")))
    d_f, d_b = r("dataloader", "image batches", "default", "faults_main"), r("dataloader", "image batches", "default", "batches_per_s")
    f, b = r("dataloader", "image batches", "hpa-2M", "faults_main"), r("dataloader", "image batches", "hpa-2M", "batches_per_s")
    if None not in (d_f, d_b, f, b):
        out.append(("dataloader, hpa-2M: page faults per batch in the main process at most 1/100 of the default's",
                    _verdict(f * 100 <= d_f, f"{fmt(f)} vs {fmt(d_f)}")))
        out.append(("dataloader, hpa-2M: batches/s no lower than the default's", _verdict(b >= d_b, f"{b / d_b:.2f}x")))
    for case in ("GPT-2 124M", "GPT-2 355M"):
        for key, batch in (("tok_s_b1", 1), ("tok_s_b8", 8)):
            d = r("generate", case, "default", key)
            for hpa in ("hpa-2M", "hpa-1G"):
                v = r("generate", case, hpa, key)
                if None not in (d, v):
                    out.append((f"generate {case} batch {batch}, {hpa}: tokens/s no lower than the default's",
                                _verdict(v >= d, f"{v / d:.2f}x")))
    work = workloads.Threads
    for size in work.SIZES:
        for mode in work.MODES:
            one = r("threads", f"{size} {mode} 1T", "hpa-2M", "pair_ns")
            for t in (8, 16):
                case = f"{size} {mode} {t}T"
                ours, tc = r("threads", case, "hpa-2M", "pairs_per_s"), r("threads", case, "tcmalloc", "pairs_per_s")
                if None not in (ours, tc):
                    out.append((f"threads {case}, hpa-2M: pairs/s at least tcmalloc's",
                                _verdict(ours >= tc, f"{ours / tc:.2f}x")))
                ns = r("threads", case, "hpa-2M", "pair_ns")
                if None not in (one, ns):
                    out.append((f"threads {case}, hpa-2M: time per pair at most 1.5x one thread's",
                                _verdict(ns <= 1.5 * one, f"{ns / one:.2f}x ({fmt(ns)} vs {fmt(one)} ns)")))
    for hpa in ("hpa-2M", "hpa-1G"):
        pages = results.info.get("generate", {}).get(hpa, {}).get("weights pages")
        if pages is not None:
            whole = all(p.split()[0] in ("1G", "2M") for p in re.split("[;,] ", pages))
            out.append((f"generate, {hpa}: every weight on explicit huge pages after from_pretrained",
                        _verdict(whole, pages)))
    return out


def _verdict(ok: bool, figure: str) -> str:
    return f"{'met' if ok else 'NOT met'}: {figure}"


# ---------------------------------------------------------------------------------------------
# Charts

def _panels(work: workloads.Workload):
    if getattr(work, "percentiles", False):
        c = work.cases[0]
        m = c.metrics[0]
        return [(f"p50 {m.label}", c, m, "p50"), (f"p99 {m.label}", c, m, "p99"),
                (f"first request, {m.label}", c, m, "first")]
    return [(f"{c.name}: {c.metrics[0].label}" if len(work.cases) > 1 else c.metrics[0].label, c, c.metrics[0], "median")
            for c in work.cases]


def chart(results, group: str, quick: bool, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = workloads.GROUPS[group](quick)
    data = results.data[group]
    panels = [p for p in _panels(work) if allocators.BASELINE in data.get(p[1].name, {})]
    if not panels:
        return
    ncols = 3 if len(panels) > 4 else min(len(panels), 2)
    nrows = -(-len(panels) // ncols)
    names = [a.name for a in allocators.for_workload(group)]
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 0.34 * len(names) * nrows + 1.2 * nrows),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (label, c, m, stat) in zip(axes.flat, panels):
        by = data[c.name]
        base = by[allocators.BASELINE][m.key][stat]
        present = [n for n in names if n in by]
        vals = [by[n][m.key][stat] for n in present]
        ratios = [better(m, v, base) for v in vals]
        colors = ["0.55" if n == allocators.BASELINE else "tab:green" if n.startswith("hpa") else "tab:blue"
                  for n in present]
        y = range(len(present))
        ax.barh(y, ratios, color=colors)
        ax.set_yticks(list(y), present, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        if max(ratios) / max(min(ratios), 1e-9) > 20:
            ax.set_xscale("log")
        ax.set_title(f"{label} ({c.name})" if len(work.cases) == 1 and not getattr(work, "percentiles", False)
                     else label, fontsize=9)
        ax.set_xlabel("x better than default", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        for yi, (r, v) in enumerate(zip(ratios, vals)):
            ax.text(r, yi, f" {fmt(v)}", va="center", fontsize=7)
        ax.margins(x=0.25)
    fig.suptitle(f"{work.title}{' (quick)' if quick else ''}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The report

def write(results, folder: str, quick: bool) -> str:
    os.makedirs(folder, exist_ok=True)
    lines = [f"# Allocator benchmarks{' (quick mode: small sizes, few rounds)' if quick else ''}", ""]
    mach = getattr(results, "machine", None) or machine()
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in mach.items()] + [""]
    lines += ["## Allocators", ""]
    for a in allocators.ALLOCATORS:
        why = results.skipped.get(a.name)
        lines.append(f"- `{a.name}`: {a.about}" + (f" (not run: {why})" if why else ""))
    lines += ["", RATIO_NOTE, ""]
    rows = summary(results, quick)
    if len(rows[0]) > 1:
        lines += ["## Summary", "", "Headline figure of each workload (the sections below have the rest).", "",
                  markdown_table(rows), ""]
    found = aims(results)
    if found:
        lines += ["## Aims", ""] + [f"- {aim}: {verdict}" for aim, verdict in found] + [""]
    for group in workloads.GROUPS:
        if group not in results.data:
            continue
        work = workloads.GROUPS[group](quick)
        png = f"{group}.png"
        rounds, warmup = work.quick_rounds if quick else work.rounds
        how = (f"{rounds} rounds, each in a fresh process" if work.process_per == "round"
               else f"{rounds} rounds after {warmup} warm-up" if warmup else f"{rounds} rounds")
        if group == "threads":
            threads_chart(results, quick, os.path.join(folder, png))
            lines += [f"## {work.title}", "", work.about, "", f"Medians over {how}.", "",
                      "Pairs per second (in brackets: over one thread's):", "",
                      markdown_table(threads_table(results, quick, "pairs_per_s")), "",
                      "Time per pair in the allocator, ns (in brackets: over one thread's):", "",
                      markdown_table(threads_table(results, quick, "pair_ns")), ""]
        else:
            chart(results, group, quick, os.path.join(folder, png))
            label = _shared_label(work)
            lines += [f"## {work.title}", "", work.about, "",
                      f"Medians over {how}" + (f"; figures are {label}." if label else "."), "",
                      markdown_table(table(results, group, quick)), ""]
        if os.path.exists(os.path.join(folder, png)):
            lines += [f"![{work.title}]({png})", ""]
    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"machine": mach, **results.to_json()}, f, indent=1)
    return path
