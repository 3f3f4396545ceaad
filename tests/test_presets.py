"""The presets in configs/: each loads and runs; install(config=NAME) takes one by name."""
import pytest

from hugepage_allocator import ConfigError
from hugepage_allocator._settings import PRESETS_DIR, presets, resolve


def test_the_presets_are_the_toml_files_of_configs():
    import os

    assert set(presets()) >= {"default", "training", "inference", "small"}
    assert os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "configs")) == os.path.realpath(PRESETS_DIR)


def test_the_default_preset_is_the_defaults():
    assert resolve("default") == resolve()


@pytest.mark.parametrize("name", presets())
def test_every_preset_installs_and_serves_tensors_from_huge_pages(pools, python, name):
    pools.ensure_free("2M", 160)
    r = python(f"""
        hpa.install({name!r}, prefault=min(hpa._settings.resolve({name!r})["prefault"], 64 << 20))
        t = torch.ones(16 << 20, dtype=torch.uint8)
        report(kps=kernel.page_size_kb(t.data_ptr()), sum=int(t.sum()))
    """)
    assert r.values == {"kps": 2048, "sum": 16 << 20}


def test_the_inference_preset_prefaults_so_the_first_request_pays_no_faults(pools, python):
    pools.ensure_free("2M", 160)
    r = python("""
        hpa.install("inference", prefault="256MB")
        before = minflt()
        t = torch.empty(64 << 20, dtype=torch.uint8)
        t.fill_(1)
        report(faults=minflt() - before, reserved=hpa.memory_stats()["reserved_bytes.all.current"])
    """)
    assert r["faults"] < 32, "64 MiB on fresh 2 MiB pages would take 32 faults, on 4 KiB pages 16384"
    assert r["reserved"] >= 256 << 20


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="neither a preset .*default.*training"):
        resolve("trianing")


def test_prefault_beyond_max_cached_is_refused():
    with pytest.raises(ConfigError, match="prefault"):
        resolve({"prefault": "1GB", "max_cached": "256MB"})
