"""A short CPU training loop, run with PyTorch's default allocator and with hugepage_allocator, side by side.

    python examples/demo.py [--steps N]

Each allocator runs in its own fresh process on the same model and data; the table shows time per
step and page faults (ru_minflt), and where the kernel put a weight and an activation.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def page_size_kb(address: int) -> int:
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "KernelPageSize:":
                return int(line.split()[1])
    return 0


def train(use_hugepages: bool, steps: int) -> dict:
    import torch

    if use_hugepages:
        import hugepage_allocator

        hugepage_allocator.install()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    # Activations of 4096 x 4096 floats (64 MiB): the size at which glibc maps and unmaps each time.
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 4096), torch.nn.GELU(),
        torch.nn.Linear(4096, 1024), torch.nn.GELU(),
        torch.nn.Linear(1024, 64),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(4096, 64)
    y = torch.randn(4096, 64)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return float(loss)

    step()  # warm-up: the first step creates optimizer state and fills the pool
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    activation = model[0](x)
    return {
        "ms_per_step": 1000 * seconds / steps,
        "faults_per_step": faults / steps,
        "loss": loss,
        "weight_page_kb": page_size_kb(model[2].weight.data_ptr()),
        "activation_page_kb": page_size_kb(activation.data_ptr()),
    }


def page_label(kb: int) -> str:
    return {4: "4 KiB", 2048: "2 MiB", 1048576: "1 GiB"}.get(kb, f"{kb} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", choices=["default", "hugepage"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(train(args.child == "hugepage", args.steps)))
        return 0

    results = {}
    for mode in ("default", "hugepage"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    d, h = results["default"], results["hugepage"]
    rows = [
        ("time per step", f"{d['ms_per_step']:.1f} ms", f"{h['ms_per_step']:.1f} ms",
         f"{d['ms_per_step'] / h['ms_per_step']:.2f}x faster"),
        ("page faults per step", f"{d['faults_per_step']:.0f}", f"{h['faults_per_step']:.0f}",
         "none at all" if h["faults_per_step"] < 0.5 else f"{d['faults_per_step'] / h['faults_per_step']:.0f}x fewer"),
        ("a weight's pages", page_label(d["weight_page_kb"]), page_label(h["weight_page_kb"]), ""),
        ("an activation's pages", page_label(d["activation_page_kb"]), page_label(h["activation_page_kb"]), ""),
        ("final loss", f"{d['loss']:.6f}", f"{h['loss']:.6f}", "same" if d["loss"] == h["loss"] else "differs"),
    ]
    print(f"MLP training on the CPU, {args.steps} steps after one warm-up step, batch 4096\n")
    print(f"{'':24}{'default allocator':>20}{'hugepage_allocator':>20}   ")
    for label, a, b, note in rows:
        print(f"{label:24}{a:>20}{b:>20}   {note}")
    if h["weight_page_kb"] != 2048:
        print("\nNo explicit huge pages were free, so the allocator fell back to transparent huge pages.\n"
              "Reserve some (as root): echo 1024 > /proc/sys/vm/nr_hugepages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
