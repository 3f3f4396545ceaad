"""Client: a CNN image classifier trained on synthetic images fed by forked DataLoader workers, run
on the default allocator and on this one in the same test.

The CNN is transformers' ResNetForImageClassification built from a small config (random, seeded
weights). It stands in for the torchvision / timm ResNet a user would reach for: their wheels on
PyPI do not load against this torch 2.13.0 CPU build (`torchvision::nms does not exist`), and
transformers' ResNet is the same architecture (conv stem, BatchNorm, residual basic blocks,
pooling, linear head) run through the same PyTorch conv / batch_norm kernels.

Compared, bit for bit: every step's loss (float.hex), the last step's gradients, the trained
parameters and BatchNorm statistics (sha256 of the state dict), and evaluation logits.
"""
from __future__ import annotations

CNN = """
    from torch.utils.data import DataLoader, Dataset
    from transformers import ResNetConfig, ResNetForImageClassification


    class SyntheticImages(Dataset):
        \"\"\"3x96x96 images: a fixed random template per class plus noise, made in the worker.\"\"\"
        def __init__(self, n, seed):
            self.n, self.seed = n, seed
            self.templates = torch.randn(10, 3, 96, 96, generator=torch.Generator().manual_seed(99))

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(self.seed * 100003 + i)
            label = int(torch.randint(0, 10, (1,), generator=g))
            return self.templates[label] + 0.8 * torch.randn(3, 96, 96, generator=g), label


    if __name__ == "__main__":
        # libgomp's thread pool does not survive fork(): a forked worker that runs a parallel op
        # after the parent ran one hangs, with any allocator. One thread in the parent avoids it.
        torch.set_num_threads(1)
        torch.manual_seed(0)
        config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                              depths=[1, 1, 1, 1], layer_type="basic", num_labels=10)
        model = ResNetForImageClassification(config)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        stem = {}
        model.resnet.embedder.register_forward_hook(lambda m, i, out: stem.update(where=where(out)))
        # Workers are forked again each epoch, from a parent whose model, gradients, optimizer
        # state and cached activations are on huge pages.
        loader = DataLoader(SyntheticImages(128, 1), batch_size=16, shuffle=True, num_workers=2,
                            multiprocessing_context="fork", generator=torch.Generator().manual_seed(0))
        losses, batches = [], set()
        for epoch in range(2):
            model.train()
            for images, labels in loader:
                batches.add(where(images))
                out = model(pixel_values=images, labels=labels)
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
                losses.append(out.loss.item())
        grads = [p.grad for p in model.parameters()]
        model.eval()
        test = SyntheticImages(64, 2)
        images = torch.stack([test[i][0] for i in range(64)])
        labels = torch.tensor([test[i][1] for i in range(64)])
        with torch.no_grad():
            logits = model(pixel_values=images).logits
        report(losses=hexes(losses), grads=digest(grads), state=digest(model.state_dict()),
               logits=digest(logits), accuracy=float((logits.argmax(1) == labels).float().mean()),
               params=sorted({where(p) for p in model.parameters()}),
               grad_pages=sorted({where(g) for g in grads}),
               momentum=sorted({where(s["momentum_buffer"]) for s in optimizer.state.values()}),
               stem=stem["where"], batches=sorted(batches))
"""


def test_resnet_trained_with_forked_dataloader_workers(pools, twin):
    """Two epochs of 8 steps (SGD with momentum, BatchNorm in training mode), samples made by two
    forked workers per epoch. Proves: losses, gradients, trained state and evaluation logits equal
    to the default's; the model learned (evaluation accuracy above chance); parameters, gradients,
    momentum buffers and the stem's activations on 2 MiB pages (ordinary pages in the default run);
    batches, collated by the workers, on the allocator's shared regions of 2 MiB pages (the
    default run: /dev/shm)."""
    pools.ensure_free("2M", 256)
    default, ours = twin.both(CNN, timeout=240)
    assert len(ours["losses"]) == 16
    for key in ("losses", "grads", "state", "logits"):
        assert ours[key] == default[key], key
    assert ours["accuracy"] > 0.3, ours["accuracy"]
    for key in ("params", "grad_pages", "momentum"):
        assert ours[key] == ["2M"] and "2M" not in default[key], (key, ours[key], default[key])
    assert ours["stem"] == "2M" and default["stem"] != "2M"
    assert ours["batches"] == ["2M"] and default["batches"] == ["shm"]
