"""Where tensors land, judged from /proc/self/smaps (KernelPageSize of the mapping holding data_ptr)."""
import pytest

MiB = 1 << 20
GiB = 1 << 30


def test_ordinary_tensors_of_a_few_mib_land_on_2mib_hugetlb_pages(pools, python):
    pools.ensure_free("2M", 256)
    r = python("""
        before = torch.empty(8 << 20, dtype=torch.uint8)
        hpa.install()
        model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 1024))
        opt = torch.optim.Adam(model.parameters())
        x = torch.randn(512, 1024)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        tensors = {
            "empty 2MiB": torch.empty(2 << 20, dtype=torch.uint8),
            "zeros 3MiB": torch.zeros(3 << 20, dtype=torch.uint8),
            "randn 16MiB": torch.randn(4 << 20),
            "empty_strided 64MiB": torch.empty_strided((4096, 4096), (4096, 1)),
            "input batch": x,
            "linear weight": model[0].weight,
            "linear grad": model[0].weight.grad,
            "adam exp_avg": opt.state[model[0].weight]["exp_avg"],
            "adam exp_avg_sq": opt.state[model[2].weight]["exp_avg_sq"],
        }
        report(before=kernel.page_size_kb(before.data_ptr()),
               pages={name: kernel.page_size_kb(t.data_ptr()) for name, t in tensors.items()},
               aligned={name: t.data_ptr() % 64 == 0 for name, t in tensors.items()})
    """)
    assert r["before"] == 4, "a tensor made before install() should stay on ordinary pages"
    assert r["pages"] == {name: 2048 for name in r["pages"]}
    assert all(r["aligned"].values())


def test_tensor_of_1_5_gib_has_a_1gib_page_head_and_a_2mib_page_tail(pools, python):
    pools.ensure_free("1G", 1)
    pools.ensure_free("2M", 256)
    r = python("""
        hpa.install()
        free_1g, free_2m = kernel.pool("1G", "free_hugepages"), kernel.pool("2M", "free_hugepages")
        t = torch.empty(3 << 29, dtype=torch.uint8)   # 1.5 GiB
        t[::4096] = 7
        head = kernel.mapping_of(t.data_ptr())
        tail = kernel.mapping_of(t.data_ptr() + (1 << 30))
        report(head=[head.kernel_page_kb, head.end - head.start], tail=[tail.kernel_page_kb, tail.end - tail.start],
               contiguous=head.end == tail.start, ok=bool((t[::4096] == 7).all()),
               used_1g=free_1g - kernel.pool("1G", "free_hugepages"),
               used_2m=free_2m - kernel.pool("2M", "free_hugepages"))
    """)
    assert r["head"] == [1048576, GiB]
    assert r["tail"] == [2048, GiB // 2]
    assert r["contiguous"] and r["ok"]
    assert r["used_1g"] == 1 and r["used_2m"] >= 256, "one 1 GiB page, 256 of 2 MiB (and the small stuff's)"


def test_tensor_of_1_5_gib_takes_two_1gib_pages_when_no_2mib_page_is_free(pools, python):
    pools.ensure_free("1G", 2)
    pools.set_free("2M", 0)
    r = python("""
        hpa.install()
        t = torch.empty(3 << 29, dtype=torch.uint8)
        m = kernel.mapping_of(t.data_ptr())
        report(kps=m.kernel_page_kb, length=m.end - m.start)
    """)
    assert r.values == {"kps": 1048576, "length": 2 * GiB}


def test_tensor_of_1_gib_falls_back_to_2mib_pages_without_1gib_pages(pools, python):
    pools.set_free("1G", 0)
    pools.ensure_free("2M", 520)
    r = python("""
        hpa.install()
        t = torch.empty(1 << 30, dtype=torch.uint8)
        report(kps=kernel.page_size_kb(t.data_ptr()), fallbacks=hpa.memory_stats()["num_fallbacks.hugetlb_2M"])
    """)
    assert r["kps"] == 2048
    assert r["fallbacks"] == 1


def test_uninstall_puts_new_tensors_on_ordinary_pages_again(pools, python):
    pools.ensure_free("2M", 64)
    r = python("""
        hpa.install()
        on = torch.empty(8 << 20, dtype=torch.uint8)
        hpa.uninstall()
        off = torch.empty(8 << 20, dtype=torch.uint8)
        off.fill_(1)
        report(on=kernel.page_size_kb(on.data_ptr()), off=kernel.page_size_kb(off.data_ptr()),
               installed=hpa.is_installed())
    """)
    assert r.values == {"on": 2048, "off": 4, "installed": False}


def test_small_tensors_below_min_size_stay_with_the_previous_allocator(pools, python):
    pools.ensure_free("2M", 16)
    r = python("""
        hpa.install(min_size="1MB")
        small = torch.empty(100_000, dtype=torch.uint8)
        large = torch.empty(1 << 20, dtype=torch.uint8)
        report(small=(hpa._C.block_size(small.data_ptr()) > 0), large=kernel.page_size_kb(large.data_ptr()),
               passthrough=hpa.memory_stats()["num_passthrough"])
    """)
    assert r["small"] is False
    assert r["large"] == 2048
    assert r["passthrough"] >= 1


@pytest.mark.parametrize("page_size,kps", [("2M", 2048), ("1G", 1048576)])
def test_empty_puts_one_tensor_on_the_chosen_page_size(pools, python, page_size, kps):
    pools.ensure_free(page_size, 1)
    r = python(f"""
        t = hpa.empty((256, 1024), dtype=torch.float64, page_size={page_size!r})
        t.fill_(2.5)
        report(kps=kernel.page_size_kb(t.data_ptr()), shape=list(t.shape), dtype=str(t.dtype),
               ok=bool((t == 2.5).all()), installed=hpa.is_installed())
    """)
    assert r["kps"] == kps
    assert r["shape"] == [256, 1024] and r["dtype"] == "torch.float64" and r["ok"]
    assert r["installed"] is False, "empty() must not install the allocator"


def test_empty_returns_its_pages_to_the_pool_when_the_tensor_dies(pools, python):
    pools.set_free("2M", 4)
    r = python("""
        free0 = kernel.pool("2M", "free_hugepages")
        for _ in range(20):      # 20 x 8 MiB through a pool of 8 MiB: only works if memory comes back
            t = hpa.empty(8 << 20, dtype=torch.uint8)
            t.fill_(1)
            del t
        held = kernel.pool("2M", "free_hugepages")
        hpa.empty_cache()
        report(free0=free0, held=held, after=kernel.pool("2M", "free_hugepages"))
    """)
    assert r["held"] == r["free0"] - 4, "the cached block keeps its 4 pages until empty_cache()"
    assert r["after"] == r["free0"]


def test_empty_without_free_pages_raises_out_of_memory(pools, python):
    pools.set_free("1G", 0)
    r = python("""
        try:
            hpa.empty(16, page_size="1G")
            report(raised=None)
        except torch.OutOfMemoryError as e:
            report(raised=str(e).splitlines()[0])
    """)
    assert r["raised"] and "hugetlb_1G" in r["raised"]


def test_empty_rejects_bad_arguments(python):
    r = python("""
        out = {}
        for name, call in {
            "page_size": lambda: hpa.empty(4, page_size="4M"),
            "node": lambda: hpa.empty(4, node=99),
            "shape": lambda: hpa.empty((2, -1)),
            "dtype": lambda: hpa.empty(4, dtype="float32"),
        }.items():
            try:
                call()
                out[name] = None
            except (ValueError, TypeError) as e:
                out[name] = [type(e).__name__, str(e)]
        report(**out)
    """)
    assert r["page_size"][0] == "ConfigError" and "'2M', '1G'" in r["page_size"][1]
    assert r["node"][0] == "ValueError" and "99" in r["node"][1]
    assert r["shape"][0] == "ValueError"
    assert r["dtype"][0] == "TypeError"
