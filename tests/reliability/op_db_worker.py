"""Runs the CPU float32 sample inputs of a shard of PyTorch's op_db and prints one digest per
sample: a hash of every tensor of the result (shape, dtype, strides, bytes with NaNs made one),
or the exception's type. Usage: op_db_worker.py SHARD SHARDS [install]"""
import hashlib
import json
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
if sys.argv[3:] == ["install"]:
    import hugepage_allocator

    hugepage_allocator.install()

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

# Results that are not functions of the inputs: uninitialised memory, and ops whose results were
# seen to differ between two runs of the default allocator (linalg.lstsq, meshgrid).
SKIP = ("empty", "new_empty", "empty_like", "empty_strided", "new_empty_strided", "empty_permuted",
        "linalg.lstsq", "meshgrid")


def digest(value, h):
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_sparse or t.layout != torch.strided or t.device.type != "cpu":
            h.update(repr((t.layout, t.shape)).encode())
            return
        h.update(repr((t.dtype, tuple(t.shape), t.stride())).encode())
        c = t.contiguous()
        if c.is_complex() or c.is_floating_point():
            c = torch.where(torch.isnan(c), torch.zeros_like(c), c)  # NaN payloads are not results
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    elif isinstance(value, (list, tuple)):
        h.update(b"(")
        for v in value:
            digest(v, h)
        h.update(b")")
    else:
        h.update(repr(value).encode()[:200])


def main():
    shard, shards = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    ops = [op for op in op_db if op.name not in SKIP and torch.float32 in op.supported_dtypes("cpu")]
    for i, op in enumerate(ops):
        if i % shards != shard:
            continue
        name = f"{op.name}.{op.variant_test_name}"
        try:
            torch.manual_seed(0)
            samples = list(op.sample_inputs("cpu", torch.float32))
        except Exception as e:  # noqa: BLE001  (the sample generator itself may refuse)
            out[name] = "samples:" + type(e).__name__
            continue
        for k, s in enumerate(samples):
            torch.manual_seed(k)
            h = hashlib.sha1()
            try:
                digest(op(s.input, *s.args, **s.kwargs), h)
                out[f"{name}#{k}"] = h.hexdigest()
            except Exception as e:  # noqa: BLE001  (same failures are part of the comparison)
                out[f"{name}#{k}"] = "raised:" + type(e).__name__
    if sys.argv[3:] == ["install"]:
        out["__allocs"] = sys.modules["hugepage_allocator"].memory_stats()["allocated_bytes.all.allocated"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
