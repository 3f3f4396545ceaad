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
    default, ours = twin.both(WEIGHTS, timeout=240)
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
