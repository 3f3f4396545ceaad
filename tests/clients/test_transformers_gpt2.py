"""Client: Hugging Face transformers' GPT-2 (GPT2LMHeadModel) from a small config with random,
seeded weights: save_pretrained to a directory, from_pretrained back (no hub), greedy generation,
one AdamW training step; run on the default allocator and on this one in the same test, with
PyTorch's default two threads.

Compared, bit for bit: the bytes of the saved model.safetensors, the generated tokens, the loss
(float.hex), a checksum of every gradient (sha256) and the parameters after the step.
"""
from __future__ import annotations

GPT2 = """
    import hashlib
    from collections import Counter
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                        initializer_range=0.1, bos_token_id=0, eos_token_id=1)
    created = GPT2LMHeadModel(config)
    directory = "gpt2-" + ("hugepage" if hpa.is_installed() else "default")
    created.save_pretrained(directory)
    with open(os.path.join(directory, "model.safetensors"), "rb") as f:
        saved = hashlib.sha256(f.read()).hexdigest()

    model = GPT2LMHeadModel.from_pretrained(directory)
    loaded = digest(model.state_dict())
    prompt = torch.tensor([[5, 17, 301, 42, 7, 999, 3, 64], [11, 12, 13, 14, 15, 16, 17, 18]])
    model.eval()
    tokens = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24,
                            do_sample=False, pad_token_id=0)
    created.eval()
    tokens_created = created.generate(prompt, attention_mask=torch.ones_like(prompt),
                                      max_new_tokens=24, do_sample=False, pad_token_id=0)

    model.train()
    torch.manual_seed(1)                     # dropout
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(2, 1000, (4, 64), generator=torch.Generator().manual_seed(2))
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    grads = digest([p.grad for p in model.parameters()])
    optimizer.step()
    report(saved=saved, same_as_created=digest(created.state_dict()) == loaded,
           tokens=tokens.tolist(), tokens_created=tokens_created.tolist(),
           loss=loss.item().hex(), grads=grads, trained=digest(model.state_dict()), loaded=loaded,
           created_pages=Counter(where(p) for p in created.parameters()),
           loaded_pages=Counter(where(p) for p in model.parameters()),
           grad_pages=Counter(where(p.grad) for p in model.parameters()),
           state_pages=Counter(where(s[k]) for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")),
           logits_page=where(model(input_ids=batch).logits))
"""


def test_gpt2_save_load_generate_and_train_one_step(pools, twin):
    """Proves: the model saved and loaded back is the one created (in each run); greedy generation
    gives the same 24 tokens per prompt as the default run (and as the model before saving); loss,
    gradients and the parameters after one AdamW step equal the default's. Placement: parameters
    created from the config, gradients, AdamW state and logits on 2 MiB pages (ordinary pages in
    the default run). Weights loaded from safetensors: on 2 MiB pages too (the move_weights
    setting moves them when from_pretrained returns), a mapping of model.safetensors in the
    default run."""
    pools.ensure_free("2M", 128)
    default, ours = twin.both(GPT2, timeout=240)
    assert ours["same_as_created"] and default["same_as_created"]
    assert len(ours["tokens"]) == 2 and len(ours["tokens"][0]) == 8 + 24
    assert ours["tokens"] == ours["tokens_created"]
    for key in ("saved", "tokens", "loss", "grads", "trained"):
        assert ours[key] == default[key], key
    assert ours["trained"] != ours["loaded"], "the step changed the parameters"
    for key in ("created_pages", "grad_pages", "state_pages"):
        assert list(ours[key]) == ["2M"], (key, ours[key])
        assert "2M" not in default[key], (key, default[key])
    assert ours["logits_page"] == "2M" and default["logits_page"] != "2M"
    assert list(ours["loaded_pages"]) == ["2M"], ours["loaded_pages"]
    assert [p.rsplit("/", 1)[-1] for p in default["loaded_pages"]] == ["model.safetensors"], default["loaded_pages"]
