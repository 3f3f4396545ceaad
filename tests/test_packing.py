"""Every allocation on huge pages with bounded waste, judged from /proc/self/smaps, /proc/self/status
and the kernel's hugetlb pool counters."""

GPT2_SMALL = """
import torch.nn as nn
class Block(nn.Module):
    def __init__(self, d=768):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
def gpt2_small():
    return nn.ModuleDict({"wte": nn.Embedding(50257, 768), "wpe": nn.Embedding(1024, 768),
                          "h": nn.ModuleList(Block() for _ in range(12)), "ln_f": nn.LayerNorm(768)})
def vm_rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
def hugetlb_bytes_taken():
    return sum((kernel.pool(s, "nr_hugepages") - kernel.pool(s, "free_hugepages")) * size
               for s, size in (("2M", 2 << 20), ("1G", 1 << 30)))
"""


def test_tensors_of_1_kib_100_kib_and_1_mib_sit_on_hugetlb_pages(pools, python):
    pools.ensure_free("2M", 16)
    r = python("""
        hpa.install()
        tensors = [torch.empty(n, dtype=torch.uint8) for n in (1, 100, 1 << 10, 100 << 10, 1 << 20)]
        report(kps=[kernel.page_size_kb(t.data_ptr()) for t in tensors], aligned=[t.data_ptr() % 64 == 0 for t in tensors])
    """)
    assert r["kps"] == [2048] * 5
    assert all(r["aligned"])


def test_gpt2_small_model_state_costs_at_most_1_10_of_its_bytes_and_99_percent_is_on_hugetlb(pools, python):
    pools.ensure_free("2M", 700)
    r = python(setup=GPT2_SMALL, code="""
        torch.manual_seed(0)
        rss0, huge0 = vm_rss_kb() << 10, hugetlb_bytes_taken()
        hpa.install()
        model = gpt2_small()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters()]
        requested = sum(t.nbytes for t in tensors)
        used = (hugetlb_bytes_taken() - huge0) + max(0, (vm_rss_kb() << 10) - rss0)
        on_hugetlb = sum(t.nbytes for t in tensors if kernel.page_size_kb(t.data_ptr()) == 2048)
        report(count=len(tensors), requested=requested, used=used, on_hugetlb=on_hugetlb)
    """)
    assert r["count"] > 250
    assert r["used"] <= 1.10 * r["requested"], r.values
    assert r["on_hugetlb"] >= 0.99 * r["requested"], r.values


def test_a_training_loop_of_1000_steps_does_not_grow_the_pool_after_its_first_steps(pools, python):
    pools.ensure_free("2M", 64)
    r = python(setup=GPT2_SMALL, code="""
        torch.manual_seed(0)
        hpa.install()
        model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.LayerNorm(1024), torch.nn.GELU(),
                                    torch.nn.Linear(1024, 256))
        opt = torch.optim.AdamW(model.parameters())
        x, y = torch.randn(128, 256), torch.randn(128, 256)
        taken = []
        for step in range(1000):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if step in (10, 999):
                taken.append((hugetlb_bytes_taken(), hpa.memory_stats()["reserved_bytes.all.current"]))
        report(after_10=taken[0], after_1000=taken[1], maps=hpa.memory_stats()["num_maps"])
    """)
    assert r["after_1000"] == r["after_10"], r.values


def test_max_cached_zero_gives_pages_back_on_free(pools, python):
    pools.ensure_free("2M", 64)
    r = python("""
        hpa.install(max_cached=0)
        free0 = kernel.pool("2M", "free_hugepages")
        t = torch.empty(40 << 20, dtype=torch.uint8)
        held = kernel.pool("2M", "free_hugepages")
        del t
        report(free0=free0, held=held, after=kernel.pool("2M", "free_hugepages"))
    """)
    assert r["held"] == r["free0"] - 20
    assert r["after"] == r["free0"]
