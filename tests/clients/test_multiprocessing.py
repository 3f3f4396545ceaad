"""Client: torch.multiprocessing (Process, Queue, share_memory_), under fork and spawn, including
Hogwild training in the style of pytorch/examples mnist_hogwild, run on the default allocator and
on this one in the same test.

Compared with the default run: the bytes of every tensor that crossed a process boundary (sha256),
and the final parameters where the default is deterministic. Placement from the kernel: tensors the
allocator made sit on 2 MiB pages; moved to shared memory (share_memory_(), or a Queue's put(),
which shares the storage in place) they go to the allocator's shared regions, on 2 MiB pages from
1 MiB up and on ordinary pages ("memfd") below, where the default run has /dev/shm ("shm");
tensors a child makes are on 2 MiB pages in the child (a forked child inherits the installed
allocator, a spawned one installs it from HUGEPAGE_ALLOCATOR=1).
"""
from __future__ import annotations

SHARING = """
    import torch.multiprocessing as mp
    import torch.nn as nn

    SIZES = {"8B": 2, "4KiB": 1024, "300KiB": 76800, "1MiB": 262144, "24MiB": 6291456}


    def echo(inbox, outbox):
        \"\"\"Receives tensors, sends back new ones it computed from them.\"\"\"
        while True:
            item = inbox.get()
            if item is None:
                break
            name, t = item
            out = t * 2 + 1
            outbox.put((name, out, where(t), where(out)))
            del t, out


    def bump(model, x, outbox):
        \"\"\"Writes to parameters shared with the parent, and reports a forward pass.\"\"\"
        # The parent's thread count: a spawned child starts with one per CPU, and a matmul split
        # over threads may sum in another order, so the bits of y would differ with any allocator.
        torch.set_num_threads(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
            y = model(x)
        outbox.put((digest(y), where(y), sorted({where(p) for p in model.parameters()})))


    def round_trip(ctx):
        inbox, outbox = ctx.Queue(), ctx.Queue()
        child = ctx.Process(target=echo, args=(inbox, outbox))
        child.start()
        sent = {name: torch.randn(n, generator=torch.Generator().manual_seed(n)) for name, n in SIZES.items()}
        made = {name: where(t) for name, t in sent.items()}
        for name, t in sent.items():
            inbox.put((name, t))
        result = {}
        for _ in sent:
            name, back, seen_by_child, made_by_child = outbox.get()
            result[name] = {"ok": torch.equal(back, sent[name] * 2 + 1), "digest": digest(back),
                            "made": made[name], "sent": where(sent[name]), "child_got": seen_by_child,
                            "child_made": made_by_child, "received": where(back)}
            del back
        inbox.put(None)
        child.join()
        return {"exitcode": child.exitcode, "tensors": result}


    def shared_model(ctx):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 10))
        x = torch.randn(64, 512)
        made = sorted({where(p) for p in model.parameters()})
        before = digest(model.state_dict())
        model.share_memory()
        shared = sorted({where(p) for p in model.parameters()})
        same_after_share = digest(model.state_dict()) == before
        outbox = ctx.Queue()
        child = ctx.Process(target=bump, args=(model, x, outbox))
        child.start()
        y_digest, y_where, child_sees = outbox.get()
        child.join()
        with torch.no_grad():
            parent_y = model(x)
        return {"exitcode": child.exitcode, "made": made, "shared": shared,
                "same_after_share": same_after_share, "params": digest(model.state_dict()),
                "changed": digest(model.state_dict()) != before,
                "child_y": y_digest, "parent_y": digest(parent_y), "child_y_where": y_where,
                "child_params": child_sees}


    if __name__ == "__main__":
        # libgomp's thread pool does not survive fork(): a forked child that runs a parallel op
        # after the parent ran one hangs, with any allocator. One thread in the parent avoids it.
        torch.set_num_threads(1)
        out = {}
        for method in ("fork", "spawn"):
            ctx = mp.get_context(method)
            out[method] = {"queues": round_trip(ctx), "model": shared_model(ctx)}
        report(**out)
"""


def test_queues_both_ways_and_shared_parameters(pools, twin):
    """torch.multiprocessing Queues carry tensors of 8 B to 24 MiB made by the allocator to a child
    and the child's results back; a model made under the allocator is moved to shared memory with
    model.share_memory() and a child writes to its parameters. Under fork and spawn. Proves: the
    child gets the right values and the parent sees the child's writes (checked against values the
    parent computes), every transferred tensor is equal to the default run's, and placement: the
    parent's tensors on 2 MiB pages until sent or shared, then on a shared region (2 MiB pages from
    1 MiB up, "memfd" below; the default run: /dev/shm) in both processes, the child's own results
    on 2 MiB pages."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(SHARING, timeout=240)
    for method in ("fork", "spawn"):
        q, dq = ours[method]["queues"], default[method]["queues"]
        assert q["exitcode"] == 0 and len(q["tensors"]) == 5
        for name, t in q["tensors"].items():
            assert t["ok"], (method, name)
            assert t["digest"] == dq["tensors"][name]["digest"], (method, name)
            assert (t["made"], t["child_made"]) == ("2M", "2M"), (method, name, t)
            shared = "2M" if name in ("1MiB", "24MiB") else "memfd"
            assert t["sent"] == t["child_got"] == t["received"] == shared, (method, name, t)
            theirs = dq["tensors"][name]
            assert theirs["sent"] == theirs["child_got"] == theirs["received"] == "shm", (method, name, theirs)
            assert dq["tensors"][name]["made"] != "2M" and dq["tensors"][name]["child_made"] != "2M"
        m, dm = ours[method]["model"], default[method]["model"]
        assert m["exitcode"] == 0 and m["same_after_share"] and m["changed"]
        assert m["made"] == ["2M"] and dm["made"] == ["4K"]
        assert m["shared"] == m["child_params"] == ["2M", "memfd"]  # the 2 MiB weight; the rest < 1 MiB
        assert dm["shared"] == dm["child_params"] == ["shm"]
        assert m["child_y"] == m["parent_y"], "the parent computes what the child computed"
        assert m["child_y_where"] == "2M"
        for key in ("params", "child_y"):
            assert m[key] == dm[key], (method, key)


HOGWILD = """
    import argparse
    import torch.multiprocessing as mp
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from torch.utils.data import DataLoader, TensorDataset


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
            self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
            self.conv2_drop = nn.Dropout2d()
            self.fc1 = nn.Linear(320, 50)
            self.fc2 = nn.Linear(50, 10)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
            x = x.view(-1, 320)
            x = F.relu(self.fc1(x))
            x = F.dropout(x, training=self.training)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)


    def synthetic_mnist(n, seed):
        \"\"\"28x28 images: one fixed random template per class plus noise.\"\"\"
        g = torch.Generator().manual_seed(seed)
        templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        target = torch.randint(0, 10, (n,), generator=g)
        data = templates[target] + 0.5 * torch.randn(n, 1, 28, 28, generator=g)
        return TensorDataset(data, target)


    def train(rank, args, model, dataset, outbox):
        torch.set_num_threads(1)
        torch.manual_seed(args.seed + rank)
        train_loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
        optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        model.train()
        losses = []
        for epoch in range(1, args.epochs + 1):
            for data, target in train_loader:
                optimizer.zero_grad()
                loss = F.nll_loss(model(data), target)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        grads = sorted({where(p.grad) for p in model.parameters()})
        params = sorted({where(p) for p in model.parameters()})
        outbox.put((rank, losses, grads, params))


    def test(model, dataset):
        model.eval()
        with torch.no_grad():
            data, target = dataset.tensors
            return F.nll_loss(model(data), target, reduction="sum").item() / len(target)


    def hogwild(method, num_processes, args):
        ctx = mp.get_context(method)
        torch.manual_seed(args.seed)
        model = Net()
        made = sorted({where(p) for p in model.parameters()})
        model.share_memory()  # gradients are allocated lazily, so they are not shared here
        train_set, test_set = synthetic_mnist(512, 2), synthetic_mnist(256, 3)
        loss_before = test(model, test_set)
        outbox = ctx.Queue()
        processes = []
        for rank in range(num_processes):
            p = ctx.Process(target=train, args=(rank, args, model, train_set, outbox))
            p.start()
            processes.append(p)
        reports = sorted(outbox.get() for _ in processes)
        for p in processes:
            p.join()
        params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        return {"exitcodes": [p.exitcode for p in processes], "made": made,
                "losses": [hexes(r[1]) for r in reports], "grads": [r[2] for r in reports],
                "shared": [r[3] for r in reports], "finite": bool(params.isfinite().all()),
                "test_before": loss_before, "test_after": test(model, test_set),
                "params": digest(model.state_dict())}


    if __name__ == "__main__":
        parser = argparse.ArgumentParser(description="Hogwild on synthetic MNIST-like data")
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--epochs", type=int, default=2)
        parser.add_argument("--lr", type=float, default=0.01)
        parser.add_argument("--momentum", type=float, default=0.5)
        parser.add_argument("--seed", type=int, default=1)
        args = parser.parse_args([])
        # libgomp's thread pool does not survive fork(): a forked child that runs a parallel op
        # after the parent ran one hangs, with any allocator. One thread in the parent avoids it.
        torch.set_num_threads(1)
        report(runs={f"{method} x{n}": hogwild(method, n, args)
                     for method, n in (("fork", 1), ("fork", 2), ("spawn", 1), ("spawn", 2))})
"""


def test_hogwild_training_in_the_style_of_mnist_hogwild(pools, twin):
    """pytorch/examples mnist_hogwild's shape: a small CNN, model.share_memory(), train() in
    torch.multiprocessing processes updating the shared parameters lock-free, test() in the parent;
    synthetic 28x28 data; one and two processes, under fork and under spawn. With one process the
    run is deterministic: its losses (float.hex) and final parameters equal the default's, bit for
    bit. With two, the processes' updates interleave by timing (Hogwild's races), so runs are not
    reproducible, whatever the allocator: only sanity is checked (finite parameters, and a test
    loss below the untrained model's). Placement: parameters made on 2 MiB pages, then on the
    allocator's shared regions once shared (all below 1 MiB: ordinary pages, "memfd"; the default
    run: /dev/shm); the gradients each child makes lazily on 2 MiB pages in that child."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(HOGWILD, timeout=300)
    for name, run in ours["runs"].items():
        theirs = default["runs"][name]
        processes = int(name[-1])
        assert run["exitcodes"] == [0] * processes, name
        assert run["finite"] and run["test_after"] < run["test_before"], (name, run)
        assert run["made"] == ["2M"] and theirs["made"] == ["4K"]
        assert run["shared"] == [["memfd"]] * processes and run["grads"] == [["2M"]] * processes, name
        assert theirs["shared"] == [["shm"]] * processes, name
        assert "2M" not in str(theirs["grads"]), theirs["grads"]
        assert len(run["losses"][0]) == 16
        if processes == 1:
            assert run["losses"] == theirs["losses"], name
            assert run["params"] == theirs["params"], name
