"""HUGEPAGE_ALLOCATOR=1 switches the allocator on in any Python process that imports torch, through
PyTorch's torch.backends entry points, with no code change; unset, nothing of it is loaded."""
import os
import subprocess
import sys
import textwrap

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
import kernel
first = torch.empty(8 << 20, dtype=torch.uint8)      # the script's first tensor
print("RESULT " + json.dumps({{
    "kps": kernel.page_size_kb(first.data_ptr()),
    "native_loaded": "hugepage_allocator._C" in sys.modules,
}}))
"""


def run(env, code=SCRIPT, cwd=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUGEPAGE_ALLOCATOR")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code).format(tests=TESTS_DIR)],
                          capture_output=True, text=True, env=full, cwd=cwd or "/", timeout=120)


def result(proc):
    import json

    assert proc.returncode == 0, proc.stderr
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def test_on_the_scripts_first_tensor_is_on_huge_pages(pools):
    pools.ensure_free("2M", 32)
    assert result(run({"HUGEPAGE_ALLOCATOR": "1"})) == {"kps": 2048, "native_loaded": True}


def test_on_when_the_script_imports_this_package_before_torch(pools):
    pools.ensure_free("2M", 32)
    code = SCRIPT.replace("import torch\n", "import hugepage_allocator\nimport torch\n")
    proc = run({"HUGEPAGE_ALLOCATOR": "1"}, code)
    assert "not installed" not in proc.stderr, proc.stderr
    assert result(proc) == {"kps": 2048, "native_loaded": True}


def test_off_or_unset_nothing_is_loaded():
    for env in ({}, {"HUGEPAGE_ALLOCATOR": "0"}, {"HUGEPAGE_ALLOCATOR": ""}):
        assert result(run(env)) == {"kps": 4, "native_loaded": False}, env


def test_autoloading_switched_off_leaves_the_allocator_off(pools):
    pools.ensure_free("2M", 32)
    r = result(run({"HUGEPAGE_ALLOCATOR": "1", "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}))
    assert r == {"kps": 4, "native_loaded": False}


def test_settings_come_from_hugepage_allocator_conf_inline_and_from_a_toml_file(pools, tmp_path):
    pools.ensure_free("2M", 32)
    code = """
        import torch, hugepage_allocator as hpa
        t = torch.empty(8 << 20, dtype=torch.uint8)
        import json
        print("RESULT " + json.dumps(dict(ours=hpa._C.block_size(t.data_ptr()) > 0)))
    """
    assert result(run({"HUGEPAGE_ALLOCATOR": "1", "HUGEPAGE_ALLOCATOR_CONF": "min_size:16MB"}, code)) == {"ours": False}
    conf = tmp_path / "conf.toml"
    conf.write_text('min_size = "16MB"\n')
    assert result(run({"HUGEPAGE_ALLOCATOR": "1", "HUGEPAGE_ALLOCATOR_CONF": str(conf)}, code)) == {"ours": False}
    assert result(run({"HUGEPAGE_ALLOCATOR": "1", "HUGEPAGE_ALLOCATOR_CONF": "min_size:1MB"}, code)) == {"ours": True}
    assert result(run({"HUGEPAGE_ALLOCATOR": "1", "HUGEPAGE_ALLOCATOR_CONF": "small"}, code)) == {"ours": True}


def test_the_environment_overrides_a_config_argument_and_keyword_arguments_override_both(pools, tmp_path):
    pools.ensure_free("2M", 32)
    conf = tmp_path / "conf.toml"
    conf.write_text('min_size = "64MB"\nfallback = ["thp"]\n')
    code = f"""
        import json, torch
        from hugepage_allocator._settings import resolve
        v = resolve({str(conf)!r})
        w = resolve({str(conf)!r}, dict(min_size="2MB"))
        print("RESULT " + json.dumps(dict(env=v["min_size"], file=v["fallback"][0], kwarg=w["min_size"])))
    """
    r = result(run({"HUGEPAGE_ALLOCATOR_CONF": "min_size:8MB"}, code))
    assert r == {"env": 8 << 20, "file": "thp", "kwarg": 2 << 20}


def test_a_bad_setting_under_the_switch_stops_the_program_with_a_message_naming_it():
    for env, words in (
        ({"HUGEPAGE_ALLOCATOR": "1", "HUGEPAGE_ALLOCATOR_CONF": "min_sise:3"}, ["min_sise", "did you mean 'min_size'"]),
        ({"HUGEPAGE_ALLOCATOR": "1", "HUGEPAGE_ALLOCATOR_CONF": "fallback:[disk]"}, ["fallback", "'disk'", "thp"]),
        ({"HUGEPAGE_ALLOCATOR": "1", "HUGEPAGE_ALLOCATOR_CONF": "/no/such/file.toml"}, ["cannot read config file"]),
        ({"HUGEPAGE_ALLOCATOR": "maybe"}, ["HUGEPAGE_ALLOCATOR='maybe'", "use 1"]),
    ):
        proc = run(env)
        assert proc.returncode != 0, env
        assert "Traceback" not in proc.stderr, proc.stderr
        for w in words:
            assert w in proc.stderr, (env, proc.stderr)


def test_spawned_dataloader_workers_put_their_tensors_on_huge_pages_too(pools, tmp_path):
    pools.ensure_free("2M", 64)
    code = """
        import sys
        sys.path.insert(0, {tests!r})
        import torch, kernel
        class Pages(torch.utils.data.Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                t = torch.empty(4 << 20, dtype=torch.uint8)       # made in the worker process
                return torch.tensor([kernel.page_size_kb(t.data_ptr())])
        if __name__ == "__main__":
            loader = torch.utils.data.DataLoader(Pages(), batch_size=None, num_workers=2,
                                                 multiprocessing_context="spawn")
            import json
            print("RESULT " + json.dumps(dict(kps=[int(b) for b in loader])))
    """
    script = tmp_path / "spawn_workers.py"   # spawn re-imports the main module: it must be a file
    script.write_text(textwrap.dedent(code).format(tests=TESTS_DIR))
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUGEPAGE_ALLOCATOR")}
    full["HUGEPAGE_ALLOCATOR"] = "1"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=full,
                          cwd=str(tmp_path), timeout=180)
    assert result(proc) == {"kps": [2048, 2048, 2048, 2048]}
