"""to_hugepages() outside a real loader (tests/clients/test_weights.py has the loaders): its error
without install(), progress on stderr, fallback=False on a pool that runs dry, 1 GiB pages for a
state dict of more than 1 GiB, and what it leaves alone. Placement from /proc/self/smaps."""
import pytest


def test_to_hugepages_needs_install_and_can_report_progress(pools, python):
    pools.ensure_free("2M", 16)
    r = python("""
        weights = {"w": torch.randn(1 << 20), "b": torch.randn(16)}
        try:
            hpa.to_hugepages(weights)
        except RuntimeError as e:
            error = str(e)
        hpa.install()
        same = hpa.to_hugepages(weights, progress=True) is weights
        report(error=error, same=same, pages=kernel.page_size_kb(weights["w"].data_ptr()))
    """)
    assert "install() first" in r["error"]
    assert r["same"] and r["pages"] == 2048
    assert "MiB of weights on huge pages" in r.stderr


DRY = """
    # Made before install(): glibc's memory, as a loader's would be.
    weights = {f"w{i}": torch.full((2 << 20,), float(i)) for i in range(6)}   # 8 MiB each
    hpa.install(page_sizes=["2M"], fallback=["thp", "base"])
    hpa.to_hugepages(weights, fallback={fallback})
    report(pages=[kernel.page_size_kb(w.data_ptr()) for w in weights.values()],
           ours=[hpa._C.block_size(w.data_ptr()) > 0 for w in weights.values()],
           values=[bool((w == i).all()) for i, w in enumerate(weights.values())],
           fallbacks=hpa.memory_stats()["num_fallbacks.thp"] + hpa.memory_stats()["num_fallbacks.base"])
"""


def test_fallback_false_moves_what_free_huge_pages_hold_and_leaves_the_rest(pools, python):
    """Proves: with 20 MiB of free 2 MiB pages and six 8 MiB weights, fallback=False moves some onto
    2 MiB pages and leaves the others where they were (not the pool's: PyTorch's default memory),
    every value intact; fallback=True moves all of them, the rest onto fallback pages."""
    pools.set_free("2M", 10)
    r = python(DRY.replace("{fallback}", "False"))
    assert all(r["values"])
    moved = [p == 2048 for p in r["pages"]]
    assert 1 <= sum(moved) < 6, r["pages"]
    assert r["ours"] == moved, (r["ours"], r["pages"])
    r = python(DRY.replace("{fallback}", "True"))
    assert all(r["values"]) and all(r["ours"]) and r["fallbacks"] > 0


def test_more_than_a_gib_of_weights_fills_1g_pages_and_the_rest_goes_to_2m(pools, python):
    """Proves: weights of 1.2 GiB in all (600, 500 and 100 MiB) with 1 GiB pages allowed: the 600 and
    100 MiB storages share one 1 GiB page (as much as whole GiBs of the total fill), the 500 MiB one
    is on 2 MiB pages; values intact. With page_sizes [2M] nothing goes on 1 GiB pages."""
    pools.ensure_free("1G", 1)
    pools.ensure_free("2M", 320)
    code = """
        mib = 1 << 18   # float32 elements
        weights = {"a": torch.full((600 * mib,), 1.0), "b": torch.full((500 * mib,), 2.0), "c": torch.full((100 * mib,), 3.0)}
        hpa.install(page_sizes={sizes})
        hpa.to_hugepages(weights)
        report(pages={k: kernel.page_size_kb(w.data_ptr()) for k, w in weights.items()},
               values=[bool((w == i + 1).all()) for i, w in enumerate(weights.values())])
    """
    r = python(code.replace("{sizes}", '["2M", "1G"]'))
    assert all(r["values"])
    assert r["pages"] == {"a": 1 << 20, "b": 2048, "c": 1 << 20}, r["pages"]
    pools.ensure_free("2M", 610)  # all 1200 MiB on 2 MiB pages now
    r = python(code.replace("{sizes}", '["2M"]'))
    assert r["pages"] == {"a": 2048, "b": 2048, "c": 2048}, r["pages"]


def test_what_to_hugepages_leaves_alone(pools, python):
    """Proves: shared-memory storages (other processes see them), meta tensors, tensor subclasses
    and storages already in the pool keep their memory; a view of a moved tensor moves with it."""
    pools.ensure_free("2M", 16)
    r = python("""
        class Tagged(torch.Tensor):
            pass

        plain = torch.randn(1 << 16)
        weights = {"shared": torch.randn(1 << 16).share_memory_(), "meta": torch.empty(8, device="meta"),
                   "sub": torch.randn(1 << 16).as_subclass(Tagged), "plain": plain, "view": plain[10:20]}
        hpa.install()
        weights["ours"] = torch.randn(1 << 16)
        before = {k: t.data_ptr() for k, t in weights.items() if k != "meta"}
        hpa.to_hugepages(weights)
        report(kept=[k for k, p in before.items() if weights[k].data_ptr() == p],
               view=weights["view"].data_ptr() == weights["plain"].data_ptr() + 40
                    and bool((weights["view"] == weights["plain"][10:20]).all()),
               plain=kernel.page_size_kb(weights["plain"].data_ptr()))
    """)
    assert sorted(r["kept"]) == ["ours", "shared", "sub"]
    assert r["view"] and r["plain"] == 2048
