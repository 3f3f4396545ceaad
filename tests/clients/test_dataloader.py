"""Client: PyTorch's DataLoader (torch.utils.data) with its default collate, worker processes and
shared memory, run on the default allocator and on this one in the same test.

Compared: every batch of every epoch, as sha256 of its bytes, dtypes and shapes, in delivery order
(bit for bit: the samples come from seeded generators and the collate is a copy). Placement, from
the kernel (/proc/self/smaps via twin.where): in the allocator run, samples made by a worker (or by
the main process when num_workers=0) sit on explicit 2 MiB pages, batches collated by workers on
the allocator's shared regions (2 MiB pages for batches of 1 MiB and more, ordinary pages below:
"memfd"), as the main process sees them, and batches collated by the main process on 2 MiB pages;
in the default run nothing is on 2 MiB pages and workers' batches are in /dev/shm, which shows the
placement check can tell the two apart.
"""
from __future__ import annotations

# The datasets and the loop over one loader configuration, shared by the scripts below. Each
# sample's placement is noted by the process that made it (a worker or the main process) in a
# file of its own under PROBES, so that samples keep the structure the case asks for.
LOADERS = """
import glob, warnings
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

SHAPES = {                       # float32 samples
    "8B": (2,), "4KiB": (1024,), "300KiB": (300 * 256,),
    "1MiB": (256, 1024), "1MiB-1row": (255, 1024), "1MiB+1row": (257, 1024),
    "24MiB": (6144, 1024),
}
PROBES = os.path.join(os.getcwd(), "probes")   # the script's directory: children start there too
os.makedirs(PROBES, exist_ok=True)


def make_sample(i, size, form):
    x = torch.randn(SHAPES[size], generator=torch.Generator().manual_seed(1000 + i))
    with open(os.path.join(PROBES, str(os.getpid())), "a") as f:
        f.write(where(x) + "\\n")
    if form == "tuple":
        return x, torch.tensor([i, -i])
    if form == "dict":
        return {"x": x, "index": i, "mean": x.mean()}
    return x


class MapSamples(Dataset):
    def __init__(self, n, size, form):
        self.n, self.size, self.form = n, size, form

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return make_sample(i, self.size, self.form)


class StreamSamples(IterableDataset):
    \"\"\"Each worker yields its own share of the indices (every num_workers-th).\"\"\"
    def __init__(self, n, size, form):
        self.n, self.size, self.form = n, size, form

    def __iter__(self):
        info = get_worker_info()
        first, step = (info.id, info.num_workers) if info else (0, 1)
        for i in range(first, self.n, step):
            yield make_sample(i, self.size, self.form)


def run_case(kind, size, form, n, workers=0, batch=8, context=None, epochs=1, persistent=False,
             pin=False, shuffle=False):
    for old in glob.glob(os.path.join(PROBES, "*")):
        os.remove(old)
    dataset = (MapSamples if kind == "map" else StreamSamples)(n, size, form)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=shuffle,
                            multiprocessing_context=context if workers else None,
                            persistent_workers=persistent, pin_memory=pin,
                            generator=torch.Generator().manual_seed(7))
        digests, batch_places, batch_bytes = [], set(), set()
        for epoch in range(epochs):
            for b in loader:
                digests.append(digest(b))
                first = b["x"] if form == "dict" else b[0] if form == "tuple" else b
                batch_places.add(where(first))
                batch_bytes.add(first.untyped_storage().nbytes())
                if pin:
                    assert not first.is_pinned()
        del loader
    made = set()
    for path in glob.glob(os.path.join(PROBES, "*")):
        with open(path) as f:
            made.update(f.read().split())
    return {"digests": digests,
            "sample": sorted(made), "batch": sorted(batch_places), "batch_bytes": sorted(batch_bytes),
            "warnings": sorted({str(w.message) for w in caught if "pin_memory" in str(w.message)})}
"""


def check_placement(default, ours, cases):
    """Samples on 2 MiB pages in the allocator run and never in the default's; batches collated by
    workers on shared regions in ours (2 MiB pages from 1 MiB up, else "memfd") and in /dev/shm in
    the default's; batches collated by the main process on 2 MiB pages (ours)."""
    for name, workers in cases.items():
        mine, theirs = ours["cases"][name], default["cases"][name]
        assert mine["sample"] == ["2M"], (name, mine["sample"])
        assert "2M" not in theirs["sample"] + theirs["batch"], (name, theirs)
        if workers:
            big = {n >= 1 << 20 for n in mine["batch_bytes"]}
            assert len(big) == 1, (name, mine["batch_bytes"])
            assert mine["batch"] == (["2M"] if big == {True} else ["memfd"]), (name, mine["batch"])
            assert theirs["batch"] == ["shm"], (name, theirs["batch"])
        else:
            assert mine["batch"] == ["2M"], (name, mine["batch"])


BUG_REPORT = """\
import torch, hugepage_allocator as ha
from torch.utils.data import DataLoader, Dataset
ha.install()
class D(Dataset):
    def __len__(self): return 32
    def __getitem__(self, i): return torch.full((256, 1024), float(i))
for b in DataLoader(D(), batch_size=8, num_workers=1, multiprocessing_context="fork"):
    pass
"""


def test_the_bug_report_script_verbatim(pools, twin):
    """The script of the 'double free' report (forked worker, 1 MiB samples, default collate), run
    as written; the default run is the same text without the `ha.install()` line. The report line
    appended after it reads what the loop left behind (the last batch) and changes nothing before.
    The script sets no torch.set_num_threads(1) and needs none: its parent runs no parallel op
    before the fork (the worker makes and collates the samples). Proves: it exits 0 with no glibc
    complaint, and its last batch is right and the default's. Run against the build before the fix
    (e16cc83), it fails: the worker aborts with 'double free or corruption (out)'."""
    pools.ensure_free("2M", 256)
    epilogue = ('import hashlib, json\n'
                'print("RESULT " + json.dumps({"installed": ha.is_installed(), "last": '
                'hashlib.sha256(b.numpy().tobytes()).hexdigest(), "shape": list(b.shape), '
                '"first": b[:, 0, 0].tolist()}))\n')
    assert BUG_REPORT.count("ha.install()\n") == 1
    ours = twin.run(BUG_REPORT, epilogue, allocator="install", prelude=False, timeout=120)
    default = twin.run(BUG_REPORT.replace("ha.install()\n", ""), epilogue, allocator="default",
                       prelude=False, timeout=120)
    for run in (default, ours):
        assert not any(w in run.stderr for w in ("free()", "double free", "corruption", "Aborted")), run.stderr
    assert ours["installed"] is True and default["installed"] is False
    assert ours["shape"] == [8, 256, 1024] and ours["first"] == [24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0, 31.0]
    assert ours["last"] == default["last"]


def test_forked_workers_over_sizes_batches_structures_and_dataset_kinds(pools, twin):
    """fork, the context where the 'double free' was: sample sizes from 8 B to 24 MiB (1 MiB also
    one row under and over), map-style and iterable datasets, num_workers 0, 1 and 2, batch sizes 1
    and 8, samples as tensors, tuples and dicts, shuffled persistent workers over two epochs, and
    pin_memory=True (this CPU-only torch warns and ignores it; the batches are not pinned). Large
    samples with forked workers are the pairs that matter most, so every size runs with workers.
    Proves: every batch equal to the default's, placement as in the module docstring, and the same
    pin_memory warning in both runs. Against the build before the fix (e16cc83) it fails: the
    first worker forked after the num_workers=0 loaders dies of SIGSEGV."""
    pools.ensure_free("2M", 1024)
    default, ours = twin.both(LOADERS, """
        # libgomp's thread pool does not survive fork(): a forked worker that runs a parallel op
        # after the parent ran one hangs, with any allocator. One thread in the parent avoids it.
        torch.set_num_threads(1)
        fork = dict(context="fork")
        # Loaders with num_workers=0 first: the workers forked after them inherit a parent that has
        # huge-page segments in use and idle (the 'double free' came from idle segments at fork).
        cases = {
            "300KiB map w0 b8 tuple": run_case("map", "300KiB", "tuple", 24, workers=0),
            "24MiB map w0 b1 dict": run_case("map", "24MiB", "dict", 4, workers=0, batch=1),
            "8B iterable w0 b1 tensor": run_case("iterable", "8B", "tensor", 5, workers=0, batch=1),
            "8B map w2 b8 tuple": run_case("map", "8B", "tuple", 40, workers=2, **fork),
            "4KiB map w1 b1 dict": run_case("map", "4KiB", "dict", 12, workers=1, batch=1, **fork),
            "300KiB map w2 b8 dict": run_case("map", "300KiB", "dict", 24, workers=2, **fork),
            "1MiB map w1 b8 tensor": run_case("map", "1MiB", "tensor", 32, workers=1, **fork),
            "1MiB-1row map w2 b8 tuple": run_case("map", "1MiB-1row", "tuple", 24, workers=2, **fork),
            "1MiB+1row map w2 b1 tensor": run_case("map", "1MiB+1row", "tensor", 12, workers=2, batch=1, **fork),
            "24MiB map w2 b8 shuffled": run_case("map", "24MiB", "tensor", 16, workers=2, shuffle=True, **fork),
            "1MiB iterable w2 b8 dict": run_case("iterable", "1MiB", "dict", 24, workers=2, **fork),
            "24MiB iterable w1 b1 tuple": run_case("iterable", "24MiB", "tuple", 6, workers=1, batch=1, **fork),
            "1MiB+1row map w2 b8 persistent 2 epochs": run_case(
                "map", "1MiB+1row", "dict", 32, workers=2, shuffle=True, epochs=2, persistent=True, **fork),
            "1MiB map w2 b8 pin_memory": run_case("map", "1MiB", "tuple", 16, workers=2, pin=True, **fork),
        }
        report(cases=cases)
    """, timeout=300)
    expected_batches = {"8B map w2 b8 tuple": 5, "1MiB+1row map w2 b8 persistent 2 epochs": 8,
                        "24MiB iterable w1 b1 tuple": 6, "24MiB map w0 b1 dict": 4}
    for name, n in expected_batches.items():
        assert len(ours["cases"][name]["digests"]) == n, name
    epochs = ours["cases"]["1MiB+1row map w2 b8 persistent 2 epochs"]["digests"]
    assert epochs[:4] != epochs[4:], "the two shuffled epochs differ"
    for name in ours["cases"]:
        assert ours["cases"][name]["digests"] == default["cases"][name]["digests"], name
    check_placement(default, ours, {name: " w0 " not in name for name in ours["cases"]})
    warned = ours["cases"]["1MiB map w2 b8 pin_memory"]["warnings"]
    assert len(warned) == 1 and warned == default["cases"]["1MiB map w2 b8 pin_memory"]["warnings"]


SPAWNED = """
    if __name__ == "__main__":
        cases = {
            "1MiB map spawn w2 b8 dict persistent 2 epochs": run_case(
                "map", "1MiB", "dict", 24, workers=2, context="spawn", shuffle=True, epochs=2,
                persistent=True),
            "24MiB iterable forkserver w1 b1 tuple": run_case(
                "iterable", "24MiB", "tuple", 3, workers=1, batch=1, context="forkserver"),
            "8B map spawn w1 b8 pin_memory": run_case(
                "map", "8B", "tensor", 16, workers=1, context="spawn", pin=True),
        }
        report(cases=cases)
"""


def test_spawned_and_forkserver_workers_under_the_environment_switch(pools, twin):
    """spawn and forkserver workers start a fresh interpreter; with HUGEPAGE_ALLOCATOR=1 in the
    environment, `import torch` there installs the allocator too. Map-style and iterable datasets,
    1 MiB and 24 MiB samples, persistent workers over two shuffled epochs, pin_memory=True.
    Proves: batches equal to the default's, and the workers' samples on 2 MiB pages (so the
    workers run the allocator), their batches on the allocator's shared regions."""
    pools.ensure_free("2M", 512)
    default, ours = twin.both(LOADERS, SPAWNED, timeout=300)
    assert len(ours["cases"]["1MiB map spawn w2 b8 dict persistent 2 epochs"]["digests"]) == 6
    for name in ours["cases"]:
        assert ours["cases"][name]["digests"] == default["cases"][name]["digests"], name
    check_placement(default, ours, {name: True for name in ours["cases"]})


def test_spawned_workers_of_a_script_that_calls_install(pools, twin):
    """install() at the top of the script, no environment variable: the allocator is the main
    process's only; spawn and forkserver workers start fresh interpreters on the default allocator.
    Proves: batches equal to the default run's, samples made by the workers on ordinary pages and
    their batches in /dev/shm (PyTorch's own shared memory: the workers have no allocator), a batch
    collated by the main process (num_workers=0) on 2 MiB pages."""
    pools.ensure_free("2M", 256)
    code = """
        if __name__ == "__main__":
            if os.environ.get("CLIENT_INSTALL") == "1":
                hpa.install()
            cases = {
                "1MiB map spawn w1 b8": run_case("map", "1MiB", "tuple", 16, workers=1, context="spawn"),
                "300KiB map forkserver w1 b8": run_case("map", "300KiB", "dict", 16, workers=1,
                                                        context="forkserver"),
                "1MiB map w0 b8": run_case("map", "1MiB", "tuple", 16),
            }
            report(cases=cases)
    """
    default = twin.run(LOADERS, code, allocator="default")
    ours = twin.run(LOADERS, code, allocator="install", env={"CLIENT_INSTALL": "1"})
    assert ours["installed"] is True and default["installed"] is False
    for name in ours["cases"]:
        assert ours["cases"][name]["digests"] == default["cases"][name]["digests"], name
    for name in ("1MiB map spawn w1 b8", "300KiB map forkserver w1 b8"):
        assert "2M" not in ours["cases"][name]["sample"], ours["cases"][name]
        assert ours["cases"][name]["batch"] == ["shm"]
    assert ours["cases"]["1MiB map w0 b8"]["sample"] == ours["cases"]["1MiB map w0 b8"]["batch"] == ["2M"]


def test_forked_workers_of_a_parent_whose_pool_holds_every_free_huge_page(pools, twin):
    """The kernel's free 2 MiB pages all sit idle in the parent's pool when the workers fork. A
    worker that reused the memory it inherited would write to pages it shares copy-on-write with
    its parent, with no free page for the copy, and die of SIGBUS. Proves: every batch equal to the
    default's; the workers' samples off explicit huge pages (they map their own memory, and the
    kernel has none left) and their batches on ordinary shared memory ("memfd"); the main
    process's next tensor on 2 MiB pages from its cache, with no fallback there. Against a build
    whose forked child keeps its inherited cache (ForkHandler::in_child without
    Pool::forget_after_fork) the first worker dies of SIGBUS and this fails; the tests above pass
    on such a build, because with free pages to spare a copy-on-write finds its page."""
    pools.set_free("2M", 32)
    code = (LOADERS, """
        torch.set_num_threads(1)   # libgomp's pool does not survive fork(): see the test above
        taken = torch.empty(64 << 20, dtype=torch.uint8)
        taken.fill_(1)
        free_while_taken = kernel.pool("2M", "free_hugepages")
        del taken                  # idle in the pool, which keeps it: no free page left
        cases = {
            "1MiB map w2 b4": run_case("map", "1MiB", "tensor", 16, workers=2, batch=4, context="fork"),
            "300KiB iterable w1 b8 dict": run_case("iterable", "300KiB", "dict", 16, workers=1, context="fork"),
        }
        mine = torch.empty(8 << 20, dtype=torch.uint8)
        report(cases=cases, free_while_taken=free_while_taken, main=where(mine))
    """)
    default = twin.run(*code, allocator="default", timeout=180)
    ours = twin.run(*code, allocator="hugepage", timeout=180)
    assert ours["installed"] and ours["free_while_taken"] == 0, ours.values
    assert ours["fallbacks"] == 0 and ours["main"] == "2M", ours.values
    for name, case in ours["cases"].items():
        assert case["digests"] == default["cases"][name]["digests"], name
        assert "2M" not in case["sample"], (name, case["sample"])
        assert case["batch"] == ["memfd"], (name, case["batch"])
