"""Bad input never crashes and is never silently taken: every setting with wrong types, out-of-range
and garbage values (a fuzz of HUGEPAGE_ALLOCATOR_CONF), absurd tensor sizes, and install() /
uninstall() in any order from several threads."""
import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hugepage_allocator import ConfigError
from hugepage_allocator._settings import ENV_CONF, MAX_SIZE, SETTINGS, resolve

NAMES = [s.name for s in SETTINGS]
SIZE_SETTINGS = ("min_size", "huge_1g_min_size", "prefault", "max_cached")

# Pieces a confused user (or a template gone wrong) might write.
words = st.sampled_from(NAMES + ["", " ", "min_sise", "page_size", "MIN_SIZE", "2M", "1G", "4M", "thp",
                                 "base", "disk", "unlimited", "none", "-1", "0", "1e9", "64MB", "2GB",
                                 "99999999999999999999T", "0x10", "1.5G", "nan", "inf", "true", "[]",
                                 "[2M", "2M]", "default", "training", "inference", "small", "/", ".toml",
                                 "=", "\"", "'", "#", "\\", "é", "\t"])
garbage = st.text(alphabet=string.printable + "é[]:,", max_size=40)
inline = st.lists(st.one_of(words, garbage), max_size=8).map(lambda parts: "".join(
    p + sep for p, sep in zip(parts, [":", ",", ":[", "],", ",", ":"] * 2)))


def check_values(values):
    """A configuration that was accepted is one the native core can take."""
    assert set(values) == set(NAMES)
    for name in SIZE_SETTINGS:
        v = values[name]
        assert v is None if name == "max_cached" and v is None else isinstance(v, int) and 0 <= v <= MAX_SIZE
    assert values["huge_1g_min_size"] >= 2 << 20
    assert set(values["page_sizes"]) <= {"2M", "1G"} and set(values["fallback"]) <= {"thp", "base"}
    assert values["page_sizes"] or values["fallback"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(inline, garbage))
def test_any_hugepage_allocator_conf_is_taken_whole_or_refused_naming_the_variable(text):
    try:
        values = resolve(environ={ENV_CONF: text})
    except ConfigError as e:
        if text.strip():
            assert ENV_CONF in str(e), str(e)
        return
    check_values(values)


values = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
    st.sampled_from([math.inf, -0.0, 1e300]), words, garbage, st.binary(max_size=8),
    st.lists(st.one_of(words, st.integers(), st.none()), max_size=4),
    st.dictionaries(words, words, max_size=2), st.tuples(words), st.just(object()),
    st.just(ConfigError), st.sets(words, max_size=3),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), value=values)
def test_any_value_of_any_setting_is_taken_or_refused_naming_the_setting(name, value):
    for config, overrides in (({name: value}, None), (None, {name: value})):
        try:
            got = resolve(config, overrides)
        except ConfigError as e:
            assert repr(name) in str(e) or "page_sizes and fallback" in str(e) or "prefault" in str(e), str(e)
            continue
        check_values(got)


@settings(max_examples=200, deadline=None)
@given(config=values)
def test_any_config_argument_is_taken_or_refused_with_a_config_error(config):
    try:
        got = resolve(config)
    except ConfigError:
        return
    check_values(got)


def test_a_config_path_with_a_nul_byte_or_a_directory_is_refused_clearly(tmp_path):
    for config in ("conf\x00.toml", "a\x00b", str(tmp_path), str(tmp_path) + "/"):
        with pytest.raises(ConfigError, match="config"):
            resolve(config)


def test_bad_settings_through_the_environment_and_install_leave_the_process_working(pools, python):
    pools.ensure_free("2M", 16)
    r = python("""
        errors = []
        for env, kwargs in ((None, {"min_size": object()}), (None, {"page_sizes": "3M"}),
                            (None, {"max_cached": -5}), (None, {"fallback": [None]}),
                            ("min_size:[[", {}), ("page_sizes:[],fallback:[]", {}),
                            ("min_size:1,min_size:1", {}), ("huge_1g_min_size:1", {}),
                            (None, {"prefault": 1 << 70}), (None, {"no_such": 1})):
            if env is None:
                os.environ.pop("HUGEPAGE_ALLOCATOR_CONF", None)
            else:
                os.environ["HUGEPAGE_ALLOCATOR_CONF"] = env
            try:
                hpa.install(**kwargs)
                errors.append(("accepted", env, repr(kwargs)))
            except hpa.ConfigError as e:
                if hpa.is_installed():
                    errors.append(("installed anyway", env, repr(kwargs)))
            except Exception as e:
                errors.append((type(e).__name__, str(e)))
        os.environ.pop("HUGEPAGE_ALLOCATOR_CONF", None)
        hpa.install()
        t = torch.full((8 << 20,), 3, dtype=torch.uint8)
        report(errors=errors, kps=kernel.page_size_kb(t.data_ptr()), ok=bool((t == 3).all()))
    """)
    assert r["errors"] == []
    assert r["kps"] == 2048 and r["ok"]


def test_absurd_tensor_sizes_raise_a_python_error_and_the_process_lives_on(pools, python):
    pools.ensure_free("2M", 8)
    r = python("""
        hpa.install()
        raised = {}
        keep = torch.full((300 << 10,), 9, dtype=torch.uint8)
        for name, make in (("empty 2**60", lambda: torch.empty(1 << 60, dtype=torch.uint8)),
                           ("empty 2**47", lambda: torch.empty(1 << 47, dtype=torch.uint8)),
                           ("empty 2**62 floats", lambda: torch.empty(1 << 60, dtype=torch.float32)),
                           ("resize_", lambda: keep.resize_(1 << 60)),
                           ("hpa.empty", lambda: hpa.empty(1 << 58))):
            try:
                make()
                raised[name] = None
            except (RuntimeError, ValueError) as e:
                raised[name] = [type(e).__name__, str(e).splitlines()[0]]
        after = torch.empty(8 << 20, dtype=torch.uint8)   # one absurd request does not poison the pool
        after.fill_(3)
        report(raised=raised, kps=kernel.page_size_kb(after.data_ptr()), ooms=hpa.memory_stats()["num_ooms"],
               keep=keep.untyped_storage().nbytes() == 300 << 10 and bool((keep.resize_(300 << 10) == 9).all()))
    """)
    raised = r["raised"]
    assert all(raised.values()), raised
    assert raised["empty 2**60"][0] == "OutOfMemoryError" and "1152921504606846976 bytes" in raised["empty 2**60"][1]
    assert raised["resize_"][0] == "OutOfMemoryError", "a failed resize is an error, not a crash"
    assert r["keep"], "the tensor whose resize failed keeps its storage and data"
    assert r["kps"] == 2048 and r["ooms"] >= 3


def test_install_and_uninstall_in_any_order_from_several_threads(pools, python):
    """Threads install, reconfigure, uninstall and allocate at random; every tensor keeps its data
    and frees through the right allocator, whatever was current when it was made or freed."""
    pools.ensure_free("2M", 64)
    r = python("""
        import random, threading
        torch.set_num_threads(1)
        start = hpa.memory_stats()["allocated_bytes.all.current"]
        errors, kept = [], []
        lock = threading.Lock()
        def work(seed):
            rng = random.Random(seed)
            live = []
            for i in range(300):
                op = rng.random()
                try:
                    if op < 0.15:
                        hpa.install()
                    elif op < 0.2:
                        hpa.install(max_cached=rng.choice([0, 1 << 20, "unlimited"]), min_size=rng.choice([0, 4096]))
                    elif op < 0.35:
                        hpa.uninstall()
                    elif op < 0.4:
                        hpa.empty_cache()
                    else:
                        n = rng.choice([16, 3000, 100 << 10, 1 << 20, 5 << 20])
                        v = (seed + i) % 251
                        t = torch.full((n,), v, dtype=torch.uint8)
                        live.append((t, v))
                        if len(live) > 5:
                            t, v = live.pop(rng.randrange(len(live)))
                            if not bool((t == v).all()):
                                errors.append("data")
                except Exception as e:
                    errors.append(repr(e))
            with lock:
                kept.extend(live)
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        ok = all(bool((t == v).all()) for t, v in kept)
        kept.clear()
        hpa.uninstall()
        off = torch.empty(4 << 20, dtype=torch.uint8)
        hpa.install()
        on = torch.empty(4 << 20, dtype=torch.uint8)
        del off
        report(errors=errors[:5], ok=ok, on=kernel.page_size_kb(on.data_ptr()),
               delta=hpa.memory_stats()["allocated_bytes.all.current"] - start - on.numel())
    """, timeout=300)
    assert r["errors"] == [] and r["ok"]
    assert r["on"] == 2048
    assert r["delta"] == 0
