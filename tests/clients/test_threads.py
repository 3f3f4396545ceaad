"""Client: an inference server's pattern, requests served by a thread pool (concurrent.futures)
running transformers' GPT-2 generation, on the default allocator and on this one in the same test.

Each request runs on a pool thread, and what it returns (generated tokens, logits of up to 2.5 MiB)
is freed later by the main thread: tensors made on one thread and freed on another. Compared with
the default run, bit for bit: every request's tokens and logits. Placement from the kernel: the
logits a pool thread made are on 2 MiB pages. Then, with the pool threads alive and idle,
empty_cache() must give back what they keep for themselves (Note [Thread caches]): the process
maps no more explicit huge pages than once the threads have exited, which returns what a thread
keeps anyway (/proc/self/smaps_rollup, Private_Hugetlb).
"""
from __future__ import annotations

SERVER = """
    from concurrent.futures import ThreadPoolExecutor
    from transformers import GPT2Config, GPT2LMHeadModel


    if __name__ == "__main__":
        torch.set_num_threads(1)  # each request on its own thread, as a server sizes them
        torch.manual_seed(0)
        config = GPT2Config(n_layer=2, n_head=4, n_embd=512, vocab_size=8000, n_positions=64)
        model = GPT2LMHeadModel(config).eval()
        # Batches of four prompts: the MLP's activations (up to 4 x 20 x 2048 floats) and the
        # logits are blocks of 256 KiB to 2.5 MiB.
        prompts = [torch.randint(0, 8000, (4, 4 + i % 8), generator=torch.Generator().manual_seed(i))
                   for i in range(24)]

        def serve(ids):
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                     do_sample=False, pad_token_id=0)
                logits = model(out).logits  # made on this thread, freed on the main one
            return out, logits, where(logits)

        pool = ThreadPoolExecutor(max_workers=4)
        results = list(pool.map(serve, prompts))
        tokens = [r[0].tolist() for r in results]
        logits = digest([r[1] for r in results])
        made = sorted({r[2] for r in results})
        del results  # freed here, on the main thread
        pages = {}
        if hpa.is_installed():
            pages["before"] = kernel.hugetlb_kb()
            hpa.empty_cache()  # the pool's four threads are alive, idle
            pages["alive"] = kernel.hugetlb_kb()
            pool.shutdown(wait=True)  # they exit: what they kept goes back at their exit
            hpa.empty_cache()
            pages["exited"] = kernel.hugetlb_kb()
        report(tokens=tokens, logits=logits, made=made, pages=pages)
"""


def test_requests_on_a_thread_pool_freed_on_the_main_thread_and_empty_cache_reaching_idle_threads(pools, twin):
    """Proves: GPT-2 generation served by four pool threads gives the default run's tokens and
    logits bit for bit; what the threads make is on 2 MiB pages; empty_cache() with the threads
    alive gives back as much as after they exited."""
    pools.ensure_free("2M", 128)
    default, ours = twin.both(SERVER, timeout=240)
    assert ours["tokens"] == default["tokens"]
    assert ours["logits"] == default["logits"]
    assert ours["made"] == ["2M"] and "2M" not in default["made"]
    pages = ours["pages"]
    assert pages["alive"] < pages["before"], pages
    assert pages["alive"] == pages["exited"], f"empty_cache() left what idle threads keep: {pages}"
