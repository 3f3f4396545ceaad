"""The command line: doctor against the real sysfs, reserve (restoring the pool), the hugepage-run
launcher, and a torchrun DDP step under it with every rank on huge pages."""
import json
import os
import subprocess
import sys
import textwrap

import kernel

PY = sys.executable
BIN = os.path.dirname(PY)


def run(args, env=None, **kw):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUGEPAGE_ALLOCATOR")}
    full.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, env=full, timeout=kw.pop("timeout", 180), **kw)


def test_doctor_reports_the_real_pools_thp_numa_and_what_to_run(pools):
    pools.set_free("2M", 3)
    proc = run([PY, "-m", "hugepage_allocator", "doctor", "--size", "1GB"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    total = kernel.pool("2M", "nr_hugepages")
    assert any(line.split()[:4] == ["2", "MiB", "system", str(total)] for line in out.splitlines()), out
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        mode = f.read().split("[")[1].split("]")[0]
    assert f"enabled={mode}" in out
    assert "node0: CPUs" in out
    assert "python -m hugepage_allocator reserve 1024MB" in out
    assert "hugepagesz=1G hugepages=1" in out
    st = os.statvfs("/dev/shm")
    assert f"/dev/shm (PyTorch's own, 4 KiB pages): {st.f_blocks * st.f_frsize / (1 << 30):.2f} GiB" in out, out
    assert f"{kernel.pool('2M', 'free_hugepages')} such pages free now" in out, out


def test_doctor_rejects_a_bad_size():
    proc = run([PY, "-m", "hugepage_allocator", "doctor", "--size", "lots"])
    assert proc.returncode == 2 and "--size" in proc.stderr


def test_reserve_sets_the_pool_reports_it_and_persists_it(pools, tmp_path):
    pools.set_free("2M", 0)  # saves the pool's size; restored after the test
    before = kernel.pool("2M", "nr_hugepages")
    proc = run([PY, "-m", "hugepage_allocator", "reserve", f"{(before + 20) * 2}MB", "--persist",
                "--sysctl-dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert kernel.pool("2M", "nr_hugepages") == before + 20
    assert f"The pool holds {before + 20} pages" in proc.stdout
    assert (tmp_path / "80-hugepage-allocator.conf").read_text().endswith(f"vm.nr_hugepages = {before + 20}\n")


def test_reserve_of_1g_pages_reports_what_the_kernel_gave(pools):
    pools.set_free("1G", 0)
    before = kernel.pool("1G", "nr_hugepages")
    proc = run([PY, "-m", "hugepage_allocator", "reserve", f"{before + 1}GB", "--page-size", "1G"])
    got = kernel.pool("1G", "nr_hugepages")
    assert f"pages of 1 GiB" in proc.stdout
    assert (proc.returncode == 0 and got == before + 1) or (proc.returncode == 1 and "kernel gave" in proc.stdout)


def test_reserve_refuses_bad_input_with_a_clear_message():
    for args, words in ((["lots"], "SIZE"), (["1GB", "--page-size", "4M"], "--page-size"),
                        (["1GB", "--node", "99"], "--node 99")):
        proc = run([PY, "-m", "hugepage_allocator", "reserve", *args])
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr)


def test_reserve_without_root_says_so(monkeypatch, capsys):
    from hugepage_allocator import _reserve, _system

    monkeypatch.setattr(_system, "can_reserve", lambda: False)  # what a non-root process sees
    before = kernel.pool("2M", "nr_hugepages")
    assert _reserve.main(["64MB"]) == 2
    assert "needs root" in capsys.readouterr().err
    assert kernel.pool("2M", "nr_hugepages") == before


def test_hugepage_run_switches_the_allocator_on_for_the_command(pools):
    pools.ensure_free("2M", 32)
    code = "import torch, hugepage_allocator as h; t = torch.empty(8 << 20); print(h.is_installed(), h._C.block_size(t.data_ptr()) > 0)"
    proc = run([os.path.join(BIN, "hugepage-run"), "--conf", "small", "--", PY, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_hugepage_run_rejects_a_bad_conf_before_running_anything():
    proc = run([os.path.join(BIN, "hugepage-run"), "--conf", "min_sise:1", "--", PY, "-c", "print('ran')"])
    assert proc.returncode == 2 and "min_sise" in proc.stderr and "ran" not in proc.stdout


DDP_STEP = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch, torch.distributed as dist
import kernel, hugepage_allocator as hpa
dist.init_process_group("gloo")
rank = dist.get_rank()
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1024, 1024))
loss = model(torch.randn(512, 1024)).square().mean()
loss.backward()
w = model.module.weight
with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as f:
    json.dump({{"installed": hpa.is_installed(), "weight": kernel.page_size_kb(w.data_ptr()),
               "grad": kernel.page_size_kb(w.grad.data_ptr()), "cpus": sorted(os.sched_getaffinity(0))}}, f)
dist.destroy_process_group()
"""


def test_torchrun_ddp_step_under_hugepage_run_puts_every_rank_on_huge_pages(pools, tmp_path):
    pools.ensure_free("2M", 128)
    script = tmp_path / "ddp_step.py"
    script.write_text(textwrap.dedent(DDP_STEP).format(tests=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path)))
    proc = run([os.path.join(BIN, "hugepage-run"), "--bind-numa", "--", os.path.join(BIN, "torchrun"),
                "--standalone", "--nproc_per_node=2", str(script)], cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["installed"] and r["weight"] == 2048 and r["grad"] == 2048, ranks
    nodes = sorted(int(n[4:]) for n in os.listdir("/sys/devices/system/node") if n.startswith("node") and n[4:].isdigit())
    if len(nodes) == 1:  # one node: both ranks get all its CPUs
        assert ranks[0]["cpus"] == ranks[1]["cpus"]


def test_hugepage_run_reserve_sets_up_the_pool_before_the_command(pools):
    pools.set_free("2M", 0)  # saves the pool's size; restored after the test
    before = kernel.pool("2M", "nr_hugepages")
    code = "import sys; sys.path.insert(0, %r); import kernel; print(kernel.pool('2M', 'nr_hugepages'))" % os.path.dirname(
        os.path.abspath(__file__))
    proc = run([os.path.join(BIN, "hugepage-run"), "--reserve", f"{(before + 16) * 2}MB", "--", PY, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(before + 16)
