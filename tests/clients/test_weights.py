"""Client: weights that loaders leave on a file mapping, moved onto huge pages by
hugepage_allocator.to_hugepages(), on the default allocator (which leaves them where they are) and
on this one in the same test.

Loaded two ways a user loads weights: transformers' GPT-2 with from_pretrained (safetensors, random
seeded weights from a small config, saved with save_pretrained: no hub), and torch.load(mmap=True)
of a state dict with an optimizer's nested state. Compared with the default run, bit for bit: the
generated tokens and the loaded values. Placement from /proc/self/smaps, and whether the file is
still mapped from /proc/self/maps.
"""
from __future__ import annotations

WEIGHTS = """
    import glob
    from transformers import GPT2Config, GPT2LMHeadModel

    def place(t):
        return where(t).replace(os.getcwd(), ".")

    def file_mapped(name):
        with open("/proc/self/maps") as f:
            return any(line.rstrip().endswith(name) for line in f)

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, n_positions=128, n_embd=256, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=1)
    directory = "gpt2-" + ("hugepage" if hpa.is_installed() else "default")
    GPT2LMHeadModel(config).save_pretrained(directory)
    model = GPT2LMHeadModel.from_pretrained(directory).eval()
    prompt = torch.tensor([[5, 17, 301, 42, 7, 999, 3, 64]])
    generate = lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                                      do_sample=False, pad_token_id=0).tolist()
    before = {"pages": sorted({place(p) for p in model.parameters()}), "mapped": file_mapped("model.safetensors"),
              "tokens": generate()}
    wte = model.transformer.wte.weight
    moved = []
    if hpa.is_installed():
        hpa.to_hugepages(model, progress=lambda done, total: moved.append((done, total)))
    after = {"pages": sorted({place(p) for p in model.parameters()}), "mapped": file_mapped("model.safetensors"),
             "tokens": generate(), "state": digest(model.state_dict()),
             "tied": model.lm_head.weight is model.transformer.wte.weight is wte
                     and model.lm_head.weight.data_ptr() == wte.data_ptr(),
             "requires_grad": all(p.requires_grad for p in model.parameters()),
             "dtypes": sorted({str(p.dtype) for p in model.parameters()})}

    # torch.load(mmap=True) of a state dict with an optimizer's nested state.
    weights = {"w": torch.randn(512, 1024), "b": torch.randn(1024), "step": torch.tensor(3)}
    weights["w_view"] = weights["w"][:, :256]
    optimizer = {"state": {0: {"exp_avg": torch.randn(512, 1024), "step": torch.tensor(7.0)}}, "lr": 0.1}
    torch.save({"model": weights, "optimizer": optimizer}, "state.pt")
    loaded = torch.load("state.pt", mmap=True)
    mmap_before = {"pages": sorted({place(t) for t in (loaded["model"]["w"], loaded["optimizer"]["state"][0]["exp_avg"])}),
                   "mapped": file_mapped("state.pt")}
    if hpa.is_installed():
        hpa.to_hugepages(loaded)
    w, view = loaded["model"]["w"], loaded["model"]["w_view"]
    mmap_after = {"pages": sorted({place(t) for t in (w, loaded["optimizer"]["state"][0]["exp_avg"])}),
                  "mapped": file_mapped("state.pt"), "digest": digest(loaded),
                  "view_shares": view.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
                                 and bool((view == w[:, :256]).all())}
    report(before=before, after=after, moved=moved, mmap_before=mmap_before, mmap_after=mmap_after)
"""


def test_to_hugepages_moves_loaded_weights_and_lets_the_file_go(pools, twin):
    """Proves: from_pretrained's weights start on the safetensors file's mapping in both runs; after
    to_hugepages() every parameter is on 2 MiB pages, the file is no longer mapped, the tied
    embedding and LM head are still one Parameter on one storage, requires_grad and dtypes are kept,
    and greedy generation gives the tokens it gave before the move and the default run's. The same
    for torch.load(mmap=True): tensors of the file on 2 MiB pages, the file unmapped, a view still a
    view, and every value (nested optimizer state included) equal to the default's. Progress is
    reported storage by storage up to the total."""
    pools.ensure_free("2M", 256)
    # The setting off: from_pretrained leaves the weights where safetensors put them, as it does
    # in the default run (test_the_setting_... below covers the setting).
    default, ours = twin.both(WEIGHTS, env={"HUGEPAGE_ALLOCATOR_CONF": "move_weights:false"}, timeout=240)
    for run in (default, ours):
        assert run["before"]["pages"] == ["file:./gpt2-" + ("hugepage" if run is ours else "default") + "/model.safetensors"]
        assert run["before"]["mapped"] and run["mmap_before"]["mapped"]
        assert run["mmap_before"]["pages"] == ["file:./state.pt"]
    a = ours["after"]
    assert a["pages"] == ["2M"] and not a["mapped"], a
    assert a["tied"] and a["requires_grad"] and a["dtypes"] == ["torch.float32"]
    assert a["tokens"] == ours["before"]["tokens"] == default["after"]["tokens"] == default["before"]["tokens"]
    assert a["state"] == default["after"]["state"]
    assert default["after"]["mapped"], "the default run keeps its file mapping: nothing moved it"
    done, total = zip(*ours["moved"])
    assert list(done) == sorted(done) and done[-1] == total[0] and len(set(total)) == 1
    m = ours["mmap_after"]
    assert m["pages"] == ["2M"] and not m["mapped"] and m["view_shares"], m
    assert m["digest"] == default["mmap_after"]["digest"]


LOADS = """
    import glob
    import safetensors.torch as st
    from transformers import GPT2Config, GPT2LMHeadModel

    def place(tensors):
        return sorted({where(t).replace(os.getcwd(), ".") for t in tensors})

    def file_mapped(name):
        with open("/proc/self/maps") as f:
            return any(line.rstrip().endswith(name) for line in f)

    def status():
        with open("/proc/self/status") as f:
            return {l.split(":")[0]: int(l.split()[1]) << 10 for l in f
                    if l.startswith(("VmHWM", "VmRSS"))}

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=8192, n_positions=256, n_embd=512, n_layer=4, n_head=8,
                        bos_token_id=0, eos_token_id=1)
    GPT2LMHeadModel(config).save_pretrained("gpt2")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM from here on: the peak of the load alone
    before = status()
    model = GPT2LMHeadModel.from_pretrained("gpt2").eval()
    after = status()
    sizes = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    prompt = torch.tensor([[5, 17, 301, 42, 7, 999, 3, 64], [11, 12, 13, 14, 15, 16, 17, 18]])
    tokens = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                            do_sample=False, pad_token_id=0).tolist()
    pretrained = {"pages": place(model.parameters()), "mapped": file_mapped("model.safetensors"),
                  "tokens": tokens, "state": digest(model.state_dict()),
                  "tied": model.lm_head.weight is model.transformer.wte.weight,
                  "requires_grad": all(p.requires_grad for p in model.parameters()),
                  "peak_growth": after["VmHWM"] - before["VmRSS"],
                  "largest": max(sizes.values()), "total": sum(sizes.values())}

    # A plain module built on the meta device, then assigned a state dict that maps its file.
    def net():
        return torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))

    torch.manual_seed(1)
    source = net()
    state = source.state_dict()
    torch.save(state, "net.pt")
    st.save_file(state, "net.safetensors")
    x = torch.randn(4, 1024)
    expected = digest(source(x))
    loads = {}
    for name, load in [("torch.load mmap=True", lambda: torch.load("net.pt", mmap=True)),
                       ("torch.load", lambda: torch.load("net.pt")),
                       ("safetensors load_file", lambda: st.load_file("net.safetensors"))]:
        for assign in (True, False):
            if assign:
                with torch.device("meta"):
                    module = net()
            else:
                module = net()
            module.load_state_dict(load(), assign=assign)
            loads[f"{name}, assign={assign}"] = {"pages": place(module.parameters()), "same": digest(module(x)) == expected,
                                                 "requires_grad": all(p.requires_grad for p in module.parameters())}
    module = net()
    st.load_model(module, "net.safetensors")
    loads["safetensors load_model"] = {"pages": place(module.parameters()), "same": digest(module(x)) == expected,
                                       "requires_grad": True}
    raw = st.load_file("net.safetensors")
    report(pretrained=pretrained, loads=loads, raw_state_dict=place(raw.values()))
"""


def test_weights_loaded_the_ordinary_way_land_on_huge_pages(pools, twin):
    """Proves the move_weights setting (on by default) with no call of this package in the client
    code: from_pretrained's GPT-2 weights end on 2 MiB pages, with the file's pages no longer
    mapped, the tied embedding still tied, requires_grad kept; generation gives the default run's
    tokens and the state equals the default's bit for bit. The load's peak resident memory grows by
    at most the largest weight (plus 8 MiB of the loader's own) over what the process held before,
    while every weight is read through the file's mapping: the file's pages are let go storage by
    storage, not all at the end (the pool's copies are hugetlb memory, which VmHWM does not count). nn.Module.load_state_dict(..., assign=True) of
    torch.load(mmap=True)'s, torch.load's and safetensors' load_file's state dicts: on 2 MiB pages;
    without assign (copies into the module's own parameters) and safetensors' load_model: on 2 MiB
    pages already. A state dict nothing loaded into a model stays on its file, in both runs."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(LOADS, timeout=300)
    p, d = ours["pretrained"], default["pretrained"]
    assert p["pages"] == ["2M"] and not p["mapped"], p
    assert d["pages"] == ["file:./gpt2/model.safetensors"] and d["mapped"], d
    assert p["tied"] and d["tied"] and p["requires_grad"]
    assert p["tokens"] == d["tokens"] and p["state"] == d["state"]
    assert p["peak_growth"] <= p["largest"] + (8 << 20), p
    for name, load in ours["loads"].items():
        assert load["same"] and load["requires_grad"], name
        assert load["pages"] == ["2M"], (name, load)
        assert default["loads"][name]["same"], name
    mapped_by_default = {n for n, load in default["loads"].items() if load["pages"][0].startswith("file:")}
    assert mapped_by_default == {"torch.load mmap=True, assign=True", "safetensors load_file, assign=True"}
    assert ours["raw_state_dict"] == default["raw_state_dict"] == ["file:./net.safetensors"]


def test_the_move_weights_setting_off_leaves_weights_where_the_loader_put_them(pools, twin):
    """Proves the setting can be turned off: with move_weights:false the allocator run's loaded
    weights are where the default run's are (the file's mapping), for from_pretrained and for
    load_state_dict(assign=True)."""
    pools.ensure_free("2M", 256)
    off = twin.run(LOADS, allocator="hugepage", env={"HUGEPAGE_ALLOCATOR_CONF": "move_weights:false"}, timeout=300)
    assert off["installed"]
    assert off["pretrained"]["pages"] == ["file:./gpt2/model.safetensors"] and off["pretrained"]["mapped"]
    assert off["loads"]["torch.load mmap=True, assign=True"]["pages"] == ["file:./net.pt"]
    assert off["loads"]["safetensors load_file, assign=True"]["pages"] == ["file:./net.safetensors"]
    assert off["loads"]["torch.load, assign=False"]["pages"] == ["2M"]
