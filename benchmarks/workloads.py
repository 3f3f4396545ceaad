"""The workloads, run inside a worker process (benchmarks/worker.py) under one allocator.

A workload group has cases; a worker sets a group (or one case of it) up once and then runs rounds
on request, each round returning its measures as numbers (times as the process's CPU time, see
Clock, or from C++; page faults from `ru_minflt`). PyTorch runs on one thread. Nothing here knows which allocator serves it: that is the
process's environment. Sizes shrink under `quick` so that the smoke test runs in minutes.

This module imports torch only inside the functions, so the pytest side can read the case lists.
"""
from __future__ import annotations

import dataclasses
import resource
import time

MiB = 1 << 20
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool = False
    kind: str = "time"  # "time" (ratios shown as x faster) or "count" (x fewer)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    metrics: tuple  # the first is the one charted


def minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _mappings():
    """Every mapping of this process from /proc/self/smaps: (lo, hi, path, {field: kB}) with the
    fields KernelPageSize, AnonHugePages and Rss."""
    out = []
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            head = fields[0]
            if not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                out.append((lo, hi, fields[5] if len(fields) > 5 else "", {}))
            elif head in ("KernelPageSize:", "AnonHugePages:", "Rss:"):
                out[-1][3][head[:-1]] = int(fields[1])
    return out


def _label(path: str, fields: dict) -> str:
    kb = fields.get("KernelPageSize", 4)
    if kb >= 1 << 20:
        return "1G"
    if kb >= 2048:
        return "2M"
    if fields.get("AnonHugePages"):
        return f"THP {100 * fields['AnonHugePages'] // max(fields['Rss'], 1)}%"
    return "file" if path.startswith("/") and not path.startswith("/dev/") else "4K"


def pages_of(tensor) -> str:
    """How the kernel backs the mapping holding `tensor`'s first byte, from /proc/self/smaps:
    '1G', '2M' (hugetlb), 'THP n%' (share of AnonHugePages in Rss), 'file' or '4K'."""
    address = tensor.data_ptr()
    for lo, hi, path, fields in _mappings():
        if lo <= address < hi:
            return _label(path, fields)
    return "4K"


class Workload:
    """One group of cases. Subclasses set the class attributes and implement setup and run."""

    name = ""
    title = ""
    about = ""
    cases: tuple = ()
    rounds = (10, 2)          # (rounds, warm-up rounds) for the full run
    quick_rounds = (3, 1)
    process_per = "group"     # "group": one worker for all cases; "case"; "round": a fresh process each round
    prefault = 0              # bytes the prefaulting configuration takes at start
    allocators: tuple = ()    # if set, only these configurations run it

    def __init__(self, quick: bool) -> None:
        self.quick = quick

    def hugetlb_need(self) -> dict:
        """Bytes of free explicit huge pages a hugetlb configuration needs: "2M" for the 2 MiB
        configurations; "1G" and "2M beside 1G" for the one that also takes 1 GiB pages."""
        return {"2M": 256 * MiB, "1G": 0, "2M beside 1G": 256 * MiB}

    def setup(self, case: str | None) -> dict:
        return {}

    def run(self, case: str) -> dict:
        raise NotImplementedError

    def finish(self) -> dict:
        """Facts to report once the rounds are done (e.g. how the kernel backs the data)."""
        return {}


def _set_threads() -> None:
    # One thread: the figures are CPU time (below), which is what a shared machine can measure
    # steadily; with one thread it is also the time the work takes when nothing else runs.
    import torch

    torch.set_num_threads(1)


class Clock:
    """A round's time as this process's CPU time (user + system, so page faults and the kernel's
    zeroing count; waiting for a CPU that another job holds does not), and as wall time."""

    def __init__(self) -> None:
        self.cpu0, self.wall0 = time.process_time_ns(), time.perf_counter_ns()

    def ms(self) -> dict:
        return {"ms": (time.process_time_ns() - self.cpu0) / 1e6,
                "wall_ms": (time.perf_counter_ns() - self.wall0) / 1e6}


# ---------------------------------------------------------------------------------------------
# 1. Hot path

_NS = (Metric("ns", "ns per pair"),)


class HotPath(Workload):
    name = "hot_path"
    title = "Hot path: allocate+free pairs"
    about = ("Cached allocate+free pairs: from C++ (the c10 allocator's allocate() and deleter, no Python in "
             "the loop) and from Python (`torch.empty`, freed at once). Median over rounds of ns per pair.")
    SIZES = {"64 B": 64, "4 KiB": 4 << 10, "256 KiB": 256 << 10, "1 MiB": MiB, "8 MiB": 8 * MiB, "64 MiB": 64 * MiB}
    PY_SIZES = ("64 B", "1 MiB", "64 MiB")
    cases = tuple(Case(f"C++ {s}", _NS) for s in SIZES) + tuple(Case(f"torch.empty {s}", _NS) for s in PY_SIZES)
    rounds = (15, 2)

    def setup(self, case):
        import torch

        import hugepage_allocator
        from hpa_testing import time_alloc_free  # times the current CPU allocator

        _set_threads()
        self.time_alloc_free = time_alloc_free
        self.torch = torch
        torch.empty(1)
        return {"c++ allocator": "hugepage" if hugepage_allocator.is_installed() else "default"}

    def run(self, case):
        kind, size = case.split(" ", 1)
        n = self.SIZES[size]
        if kind == "C++":
            pairs = 2000 if self.quick else 5000
            return {"ns": self.time_alloc_free(n, rounds=1, pairs=pairs)[0]}
        calls = 500 if self.quick else 2000
        empty, uint8 = self.torch.empty, self.torch.uint8
        t0 = time.process_time_ns()
        for _ in range(calls):
            empty(n, dtype=uint8)
        return {"ns": (time.process_time_ns() - t0) / calls}


# ---------------------------------------------------------------------------------------------
# 2. Allocation churn of a training step

_STEP = (Metric("ms", "ms per step"), Metric("faults", "page faults per step", kind="count"))


class Churn(Workload):
    name = "churn"
    title = "Allocation churn of a CPU training step"
    cases = (Case("step", _STEP),)
    rounds = (30, 2)
    quick_rounds = (4, 1)
    # A forward pass that keeps its activations, then a backward pass that allocates a gradient
    # per activation, writes it and frees both, last first: 16 tensors of 8 to 256 MiB a step.
    FULL = (8, 16, 32, 64, 128, 256, 64, 32)

    @property
    def sizes(self):
        return tuple(s * MiB // (8 if self.quick else 1) for s in self.FULL)

    @property
    def about(self):
        s = ", ".join(f"{x // MiB}" for x in self.sizes)
        return (f"One step: {len(self.sizes)} activations of {s} MiB allocated and written (forward, all live), "
                f"then per activation, last first, a gradient of its size allocated and written, both freed "
                f"(backward). Each round is one step; page faults from ru_minflt.")

    def hugetlb_need(self):
        peak = sum(self.sizes) + max(self.sizes) + 128 * MiB
        below = [n for n in self.sizes if n < 256 * MiB]  # the training preset's 1 GiB threshold
        return {"2M": peak, "1G": 2 * GiB, "2M beside 1G": sum(below) + max(below) + 128 * MiB}

    def setup(self, case):
        import torch

        _set_threads()
        self.torch = torch
        return {}

    def run(self, case):
        empty, f32 = self.torch.empty, self.torch.float32
        f0 = minflt()
        clock = Clock()
        acts = []
        for n in self.sizes:
            t = empty(n // 4, dtype=f32)
            t.fill_(1.0)
            acts.append(t)
        while acts:
            a = acts.pop()
            g = empty(a.numel(), dtype=f32)
            g.fill_(2.0)
            del g, a
        return {**clock.ms(), "faults": minflt() - f0}


# ---------------------------------------------------------------------------------------------
# 3. First touch of a fresh tensor

class FirstTouch(Workload):
    name = "first_touch"
    title = "First touch of a fresh tensor"
    cases = (Case("fresh tensor", (Metric("ms", "ms to allocate and touch"),
                                   Metric("faults", "page faults", kind="count"))),)
    rounds = (3, 0)
    quick_rounds = (2, 0)
    process_per = "round"

    @property
    def nbytes(self):
        return 256 * MiB if self.quick else 4 * GiB

    @property
    def prefault(self):
        return self.nbytes + 64 * MiB

    @property
    def about(self):
        return (f"The first tensor of a fresh process, {self.nbytes // MiB} MiB: `torch.empty`, then one byte "
                f"written per 4 KiB page; the time includes the kernel's page faults and zeroing. Each round "
                f"is a new process. Huge pages reserved for a configuration were faulted in once before "
                f"its first round, as a pool reserved ahead of a job has been.")

    def hugetlb_need(self):
        return {"2M": self.prefault + 64 * MiB, "1G": self.nbytes, "2M beside 1G": 64 * MiB}

    def setup(self, case):
        import torch

        _set_threads()
        self.torch = torch
        # The same operations once on a small tensor, so that the round's faults are the data's,
        # not those of code and interpreter state touched for the first time.
        self._touch(torch.empty(4 * MiB, dtype=torch.uint8))
        return {}

    @staticmethod
    def _touch(x) -> None:
        x.view(-1, 4096)[:, 0].fill_(1)

    def run(self, case):
        torch = self.torch
        f0 = minflt()
        clock = Clock()
        x = torch.empty(self.nbytes, dtype=torch.uint8)
        self._touch(x)
        out = {**clock.ms(), "faults": minflt() - f0}
        self.pages = pages_of(x)
        return out

    def finish(self):
        return {"pages": self.pages}


# ---------------------------------------------------------------------------------------------
# 4. Random gather from a large table

_GATHER = (Metric("ms", "ms per round"),)


class Gather(Workload):
    name = "gather"
    title = "Random gather from a large table"
    cases = (Case("index_select", _GATHER), Case("EmbeddingBag sum", _GATHER))
    rounds = (10, 2)
    DIM = 32  # float32: 128-byte rows, two cache lines
    BAG = 32

    @property
    def table_bytes(self):
        return 256 * MiB if self.quick else 4 * GiB

    @property
    def lookups(self):
        return (1 << 18) if self.quick else (1 << 21)

    @property
    def about(self):
        rows = self.table_bytes // (4 * self.DIM)
        return (f"A {self.table_bytes // MiB} MiB float32 table ({rows:,} rows of {self.DIM}); each round "
                f"looks up {self.lookups:,} uniformly random rows: `torch.index_select` into a preallocated "
                f"output, and `embedding_bag` (sum over bags of {self.BAG}).")

    def hugetlb_need(self):
        out = self.lookups * self.DIM * 4
        return {"2M": self.table_bytes + out + 128 * MiB, "1G": self.table_bytes + GiB, "2M beside 1G": 128 * MiB}

    def setup(self, case):
        import torch

        _set_threads()
        self.torch = torch
        rows = self.table_bytes // (4 * self.DIM)
        self.table = torch.empty(rows, self.DIM)
        self.table.fill_(0.5)
        g = torch.Generator().manual_seed(0)
        self.idx = torch.randint(rows, (self.lookups,), generator=g)
        self.offsets = torch.arange(0, self.lookups, self.BAG)
        self.out = torch.empty(self.lookups, self.DIM)
        return {"table pages": pages_of(self.table)}

    def run(self, case):
        torch = self.torch
        clock = Clock()
        if case == "index_select":
            torch.index_select(self.table, 0, self.idx, out=self.out)
        else:
            torch.nn.functional.embedding_bag(self.idx, self.table, self.offsets, mode="sum")
        return clock.ms()

    def finish(self):
        return {"table pages": pages_of(self.table)}


# ---------------------------------------------------------------------------------------------
# 5. End-to-end training

_TRAIN = (Metric("steps_per_s", "steps/s", higher_is_better=True),
          Metric("faults", "page faults per step", kind="count"))


def small_transformer(torch, vocab, d_model, layers, dropout):
    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, d_model)
            layer = torch.nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model,
                                                     dropout=dropout, batch_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.out = torch.nn.Linear(d_model, vocab)

        def forward(self, tokens):
            return self.out(self.enc(self.emb(tokens)))

    return LM()


class Training(Workload):
    name = "training"
    title = "End-to-end CPU training"
    cases = (Case("recommendation", _TRAIN), Case("transformer", _TRAIN))
    rounds = (20, 3)
    process_per = "case"

    @property
    def table_rows(self):
        return (1 << 19) if self.quick else (1 << 23)

    @property
    def about(self):
        return (f"Steps per second of two models, each in a fresh process. Recommendation: an EmbeddingBag of "
                f"{self.table_rows:,} x 32 float32 ({self.table_rows * 128 // MiB} MiB, sparse gradients), 8 "
                f"features of 16 ids per sample, a bottom MLP on 13 dense features and a 288-512-256-1 top MLP, "
                f"batch 2048, SGD. Transformer: 2 encoder layers, d_model 128, 4 heads, vocabulary 8192, "
                f"batch 8 x 256 tokens, AdamW. About 60% of a recommendation step is the sparse SGD update, "
                f"262,144 random read-modify-writes of table rows, whose time moves by up to 19% from one "
                f"process to the next on this kind of machine whatever the allocator: side by side in "
                f"alternating fresh processes (8 pairs), hpa-2M ran at 0.96x to 1.07x glibc-hugetlb's steps/s "
                f"(1.03x on average), both tables on 2 MiB pages; the one steady difference is the embedding's "
                f"backward, whose 32 MiB of row gradients glibc maps and the kernel zeroes every step (3.5 ms "
                f"more a step). Gaps between huge-page configurations of under 10% here are that spread.")

    def hugetlb_need(self):
        return {"2M": self.table_rows * 128 + 1536 * MiB, "1G": 2 * GiB, "2M beside 1G": 1536 * MiB}

    def setup(self, case):
        import torch

        _set_threads()
        torch.manual_seed(0)
        self.torch = torch
        if case == "recommendation":
            self._setup_recommendation(torch)
        else:
            self._setup_transformer(torch)
        return {}

    def _setup_recommendation(self, torch):
        nn = torch.nn
        rows, dim, feats, ids, batch = self.table_rows, 32, 8, 16, 2048
        weight = torch.empty(rows, dim).uniform_(-0.01, 0.01)
        self.emb = nn.EmbeddingBag(rows, dim, mode="sum", sparse=True, _weight=weight)
        self.bottom = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, dim), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(dim * (feats + 1), 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                                 nn.Linear(256, 1))
        self.sparse_opt = torch.optim.SGD(self.emb.parameters(), lr=0.05)
        self.dense_opt = torch.optim.SGD(list(self.bottom.parameters()) + list(self.top.parameters()), lr=0.05)
        g = torch.Generator().manual_seed(1)
        self.batches = [(torch.randint(rows, (batch * feats * ids,), generator=g),
                         torch.randn(batch, 13, generator=g),
                         torch.randint(0, 2, (batch, 1), generator=g).float()) for _ in range(4)]
        self.offsets = torch.arange(0, batch * feats * ids, ids)
        self.shape = (batch, feats * dim)
        self.step_fn = self._step_recommendation
        self.i = 0

    def _step_recommendation(self):
        torch = self.torch
        ids, dense, label = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.sparse_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        sparse = self.emb(ids, self.offsets).view(self.shape)
        x = torch.cat([self.bottom(dense), sparse], dim=1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self.top(x), label)
        loss.backward()
        self.sparse_opt.step()
        self.dense_opt.step()

    def _setup_transformer(self, torch):
        vocab, batch, seq = 8192, 8, 256
        self.model = small_transformer(torch, vocab, 128, 2, dropout=0.1)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.batches = [torch.randint(vocab, (batch, seq + 1), generator=g) for _ in range(4)]
        self.vocab = vocab
        self.step_fn = self._step_transformer
        self.i = 0

    def _step_transformer(self):
        torch = self.torch
        tokens = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        self.opt.step()

    def run(self, case):
        f0 = minflt()
        clock = Clock()
        self.step_fn()
        t = clock.ms()
        return {"steps_per_s": 1000 / t["ms"], "wall_ms": t["wall_ms"], "faults": minflt() - f0}


# ---------------------------------------------------------------------------------------------
# 6. Inference latency

class Inference(Workload):
    name = "inference"
    title = "Inference latency of a small transformer"
    cases = (Case("request", (Metric("ms", "ms per request"), Metric("faults", "page faults per request",
                                                                      kind="count"))),)
    rounds = (200, 0)
    quick_rounds = (30, 0)
    prefault = 1 * GiB
    # The report shows p50 and p99 of ms, and the first request's ms and faults.
    percentiles = True

    about = ("Requests one at a time to a small transformer language model (4 encoder layers, d_model 256, "
             "4 heads, vocabulary 8192) under `torch.inference_mode()`: batch 1, prompt lengths drawn from 16 to "
             "512 tokens, logits for every position. The first request of the fresh process is included.")

    def hugetlb_need(self):
        return {"2M": self.prefault + 256 * MiB, "1G": 0, "2M beside 1G": 512 * MiB}

    def setup(self, case):
        import random

        import torch

        _set_threads()
        torch.manual_seed(0)
        self.torch = torch
        self.model = small_transformer(torch, 8192, 256, 4, dropout=0.0).eval()
        rng = random.Random(0)
        self.lengths = [rng.randint(16, 512) for _ in range(self.rounds[0])]
        self.i = 0
        return {}

    def run(self, case):
        torch = self.torch
        n = self.lengths[self.i % len(self.lengths)]
        self.i += 1
        tokens = torch.randint(8192, (1, n))
        f0 = minflt()
        clock = Clock()
        with torch.inference_mode():
            logits = self.model(tokens)
            del logits
        return {**clock.ms(), "faults": minflt() - f0}


# ---------------------------------------------------------------------------------------------
# 7. Batches from DataLoader workers (shared memory between processes)

class DataLoaderBatches(Workload):
    name = "dataloader"
    title = "Image batches from DataLoader workers"
    cases = (Case("image batches", (Metric("batches_per_s", "batches/s", higher_is_better=True),
                                    Metric("faults_main", "page faults per batch, main process (from the 9th)",
                                           kind="count"),
                                    Metric("faults_workers", "page faults per batch, workers", kind="count"))),)
    rounds = (5, 1)
    quick_rounds = (2, 1)
    # What changes here is where batches live between processes: the allocators that only
    # replace malloc do not touch it; PyTorch's other sharing strategy does.
    allocators = ("default", "hpa-2M", "torch-file_system")

    @property
    def batch(self):
        return 16 if self.quick else 64

    @property
    def steps(self):
        return 30 if self.quick else 200

    @property
    def about(self):
        mib = self.batch * 3 * 224 * 224 * 4 / MiB
        return (f"One epoch per round: {self.steps} batches of {self.batch} x 3 x 224 x 224 float32 ({mib:.1f} MiB), "
                f"collated by 2 forked workers (default collate: into shared memory) from images the workers "
                f"inherited, each batch read once (sum) by the main process. batches/s from the wall clock of the "
                f"round (workers start included, as in a real epoch); page faults from ru_minflt: of the main "
                f"process from the 9th batch on (the first ones map the regions a loader reuses, and fork() "
                f"itself makes the parent fault on its own pages), and of the joined workers (RUSAGE_CHILDREN) "
                f"over the whole epoch, per batch.")

    def hugetlb_need(self):
        batch = self.batch * 3 * 224 * 224 * 4
        regions = 2 * 4 * (batch + 2 * MiB)  # per worker: those in flight and the one being collated
        return {"2M": regions + 128 * MiB, "1G": 0, "2M beside 1G": regions + 128 * MiB}

    def setup(self, case):
        import os

        import torch
        from torch.utils.data import DataLoader, Dataset

        _set_threads()
        strategy = os.environ.get("HPA_BENCH_SHARING_STRATEGY")
        if strategy:
            torch.multiprocessing.set_sharing_strategy(strategy)
        images = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        n = self.batch * self.steps

        class Images(Dataset):
            def __len__(self):
                return n

            def __getitem__(self, i):
                return images[i % 16], i

        self.loader = lambda: DataLoader(Images(), batch_size=self.batch, num_workers=2,
                                         multiprocessing_context="fork")
        self.pages = ""
        return {}

    def run(self, case):
        children = lambda: resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt  # noqa: E731
        warm = 8
        c0, t0 = children(), time.perf_counter()
        loader = self.loader()
        n = f0 = 0
        for x, _ in loader:  # exhausted: the workers are joined, so their faults are counted
            if n == warm:
                f0 = minflt()
            x.sum()
            n += 1
            if n == 2:
                self.pages = pages_of(x)
        f1 = minflt()
        del loader, x
        wall = time.perf_counter() - t0
        return {"batches_per_s": n / wall, "faults_main": (f1 - f0) / (n - warm),
                "faults_workers": (children() - c0) / n}

    def finish(self):
        return {"pages": self.pages}


# ---------------------------------------------------------------------------------------------
# 8. Generation with a loaded language model (weights from a file)

_GENERATE = (Metric("tok_s_b1", "tokens/s, batch 1", higher_is_better=True),
             Metric("tok_s_b8", "tokens/s, batch 8", higher_is_better=True),
             Metric("load_s", "load s"),
             Metric("ready_s", "load + 4 tokens s"))
_GPT2 = {"GPT-2 124M": {"n_embd": 768, "n_layer": 12, "n_head": 12},
         "GPT-2 355M": {"n_embd": 1024, "n_layer": 24, "n_head": 16}}
_GPT2_WEIGHTS = {"GPT-2 124M": 475 * MiB, "GPT-2 355M": 1354 * MiB}  # float32, tied lm_head counted once


def weights_pages(tensors) -> str:
    """How the kernel backs the bytes of `tensors`, from /proc/self/smaps: e.g. '2M 100%' or
    '1G 76%, 2M 24%' (labels as pages_of)."""
    import bisect

    spans = sorted((lo, hi, _label(path, fields)) for lo, hi, path, fields in _mappings())
    starts = [s[0] for s in spans]
    by: dict = {}
    seen = set()
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        i = bisect.bisect_right(starts, ptr) - 1
        label = spans[i][2] if i >= 0 and ptr < spans[i][1] else "?"
        by[label] = by.get(label, 0) + t.untyped_storage().nbytes()
    total = max(sum(by.values()), 1)
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))


class Generate(Workload):
    name = "generate"
    title = "Text generation with a loaded GPT-2"
    cases = tuple(Case(name, _GENERATE) for name in _GPT2)
    rounds = (3, 0)
    quick_rounds = (1, 0)
    process_per = "round"  # the load is a fresh process's: pages faulted in, nothing cached
    allocators = ("default", "hpa-2M", "hpa-2M-mapped", "hpa-1G", "torch-thp", "tcmalloc")

    @property
    def tokens(self):
        return 4 if self.quick else 24

    @property
    def about(self):
        return (f"A transformers GPT-2 (random weights from a config: 124M, and 355M with d_model 1024, 24 "
                f"layers, 16 heads; float32) saved once with `save_pretrained` (safetensors), then in a fresh "
                f"process per round: `from_pretrained` (load s: CPU time, including this allocator's move of "
                f"the weights onto huge pages; the file is in the page cache), one warm-up generation of 4 "
                f"tokens at batch 1 (load + 4 tokens s: where a mapping's pages are first read), then greedy generation of {self.tokens} new tokens from 32-token prompts at batch 1 "
                f"and batch 8 (tokens/s: new tokens of the batch per CPU second). `hpa-2M-mapped` is this "
                f"allocator with `move_weights:false`: the weights stay on the file's mapping.")

    def hugetlb_need(self):
        most = max(_GPT2_WEIGHTS.values())
        beside = max(w % GiB if w >= GiB else w for w in _GPT2_WEIGHTS.values())
        return {"2M": most + 512 * MiB, "1G": GiB, "2M beside 1G": beside + 512 * MiB}

    def _files(self, case):
        """The model's folder, made once per machine (random weights, seeded)."""
        import os
        import tempfile

        folder = os.path.join(tempfile.gettempdir(), "hugepage-allocator-bench",
                              case.replace(" ", "-").lower())
        if os.path.exists(os.path.join(folder, "config.json")):
            return folder
        import shutil

        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging

        logging.disable_progress_bar()
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(**_GPT2[case]))
        staging = f"{folder}.{os.getpid()}"
        model.save_pretrained(staging)
        del model
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
        return folder

    def setup(self, case):
        import torch

        _set_threads()
        self.torch = torch
        self.folder = self._files(case)
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.model_class = GPT2LMHeadModel
        g = torch.Generator().manual_seed(1)
        self.prompts = torch.randint(50257, (8, 32), generator=g)
        return {}

    def _generate(self, batch, tokens):
        torch = self.torch
        ids = self.prompts[:batch]
        clock = Clock()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                      min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        assert out.shape == (batch, ids.shape[1] + tokens)
        return batch * tokens * 1000 / clock.ms()["ms"]

    def run(self, case):
        clock = Clock()
        self.model = self.model_class.from_pretrained(self.folder).eval()
        load = clock.ms()
        self._generate(1, 4)  # where a mapped file's pages are first read: the default pays its faults here
        ready = clock.ms()
        return {"tok_s_b1": self._generate(1, self.tokens), "tok_s_b8": self._generate(8, self.tokens),
                "load_s": load["ms"] / 1000, "ready_s": ready["ms"] / 1000, "load_wall_s": load["wall_ms"] / 1000}

    def finish(self):
        return {"weights pages": weights_pages(list(self.model.parameters()))}


# ---------------------------------------------------------------------------------------------
# 9. The hot path under many threads

_MT = (Metric("pairs_per_s", "pairs/s", higher_is_better=True), Metric("pair_ns", "ns per pair in the allocator"),
       Metric("cpu_ns", "CPU ns per pair"))
_MT_SIZES = {"small": 1 << 10, "large": MiB}
_MT_MODES = ("same", "cross")
_MT_THREADS = (1, 2, 4, 8, 16)


class Threads(Workload):
    """Allocate+free pairs from 1 to 16 C++ threads at once (hpa_testing.time_threads: no GIL, no
    Python in the loop), each thread freeing its own blocks or (cross) the blocks of the thread
    before it in a ring, handed over in batches of 32. Figures: pairs per second of wall time over
    all threads; the time per pair spent in the allocator (median over batches: the hand-over and
    preempted batches left out); the process's CPU time per pair (results.json only)."""

    name = "threads"
    title = "Many threads: allocate+free pairs"
    about = ("Allocate+free pairs from 1, 2, 4, 8 and 16 C++ threads started together (no GIL, no Python in "
             "the loop; the c10 allocator's raw_allocate/raw_deallocate, as oneDNN calls them), of a small "
             "size (1 KiB) and a large one (1 MiB). `same`: each thread frees its own blocks; `cross`: each "
             "thread hands batches of 32 blocks to the next thread in a ring (up to 32 MiB in flight) and frees "
             "a batch it got, so every block is freed by another thread than the one that made it. Pairs per "
             "second of wall time over all threads (in brackets: over the same allocator's figure at one "
             "thread; a machine of N CPUs can reach at most Nx), and the time a pair spends in the allocator "
             "(each batch's allocations and frees timed, the hand-over not; the median over all batches, so "
             "that a batch in which its thread was preempted does not count). More threads than CPUs is a "
             "real case: it exposes lock convoys and spinning.")
    SIZES = _MT_SIZES
    MODES = _MT_MODES
    THREADS = _MT_THREADS
    TOTAL_PAIRS = {"small": 1_600_000, "large": 800_000}  # per round, over all threads
    cases = tuple(Case(f"{size} {mode} {t}T", _MT) for size in _MT_SIZES for mode in _MT_MODES for t in _MT_THREADS)
    rounds = (7, 1)
    quick_rounds = (2, 1)
    allocators = ("default", "hpa-2M", "tcmalloc", "jemalloc", "mimalloc")

    def hugetlb_need(self):
        # Cross mode at 16 threads: 64 blocks of 1 MiB in flight per thread, and what each keeps.
        return {"2M": 2 * GiB, "1G": 0, "2M beside 1G": 2 * GiB}

    @staticmethod
    def parse(case: str) -> tuple[str, str, int]:
        size, mode, threads = case.split()
        return size, mode, int(threads[:-1])

    def setup(self, case):
        import torch

        import hugepage_allocator
        from hpa_testing import time_threads

        _set_threads()
        self.time_threads = time_threads
        torch.empty(1)
        return {"c++ allocator": "hugepage" if hugepage_allocator.is_installed() else "default"}

    def run(self, case):
        size, mode, threads = self.parse(case)
        total = self.TOTAL_PAIRS[size] // (8 if self.quick else 1)
        per_thread = max(32, total // threads // 32 * 32)
        r = self.time_threads(self.SIZES[size], threads, per_thread, cross=(mode == "cross"))
        return {"pairs_per_s": r["pairs"] / (r["wall_ns"] / 1e9), "pair_ns": r["batch_ns"],
                "cpu_ns": r["cpu_ns"] / r["pairs"]}


GROUPS = {w.name: w for w in (HotPath, Threads, Churn, FirstTouch, Gather, Training, Inference,
                               DataLoaderBatches, Generate)}
