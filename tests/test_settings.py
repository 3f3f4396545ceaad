"""Settings: the inline grammar, TOML files, precedence and an error for every kind of bad input."""
import pytest

from hugepage_allocator import ConfigError
from hugepage_allocator._settings import SETTINGS, parse_inline, parse_size, resolve


def test_defaults_come_from_the_table():
    assert resolve() == {s.name: s.default for s in SETTINGS}


@pytest.mark.parametrize("text,n", [("0", 0), ("4096", 4096), ("512KB", 512 << 10), ("64MB", 64 << 20),
                                    ("2GB", 2 << 30), ("4KiB", 4 << 10), ("1g", 1 << 30), ("3 M", 3 << 20), (17, 17)])
def test_sizes_take_units(text, n):
    assert parse_size(text) == n


def test_inline_grammar_with_lists():
    assert parse_inline("min_size:2MB, page_sizes:[2M,1G],fallback:[]") == {
        "min_size": "2MB", "page_sizes": ["2M", "1G"], "fallback": []}
    values = resolve("min_size:2MB,page_sizes:[2M],fallback:[thp]")
    assert values["min_size"] == 2 << 20 and values["page_sizes"] == ("2M",) and values["fallback"] == ("thp",)


def test_keyword_arguments_override_the_config():
    assert resolve("min_size:2MB", {"min_size": "4MB"})["min_size"] == 4 << 20
    assert resolve({"fallback": []}, {})["fallback"] == ()


def test_toml_file(tmp_path):
    path = tmp_path / "conf.toml"
    path.write_text('# a comment\nmin_size = "8MB"\npage_sizes = ["2M"]\n')
    values = resolve(str(path))
    assert values["min_size"] == 8 << 20 and values["page_sizes"] == ("2M",)


@pytest.mark.parametrize("config,overrides,expected", [
    (None, {"min_sise": 1}, "unknown setting 'min_sise' (did you mean 'min_size'?)"),
    (None, {"colour": 1}, "unknown setting 'colour'"),
    (None, {"min_size": "lots"}, "bad value for setting 'min_size': 'lots' is not a size"),
    (None, {"min_size": -1}, "bad value for setting 'min_size': -1 is out of range"),
    (None, {"min_size": True}, "bad value for setting 'min_size': a size, not a boolean"),
    (None, {"min_size": 1.5}, "bad value for setting 'min_size': a size (an int or a string like '64MB'), not float"),
    (None, {"huge_1g_min_size": "1MB"}, "bad value for setting 'huge_1g_min_size': 1048576 is below the minimum"),
    (None, {"page_sizes": ["4M"]}, "bad value for setting 'page_sizes': '4M' is not one of ['2M', '1G']"),
    (None, {"fallback": 3}, "bad value for setting 'fallback': a list of values from ['thp', 'base'], not int"),
    ("min_size", None, "config 'min_size' is neither a preset"),
    ("/no/such.toml", None, "cannot read config file '/no/such.toml'"),
    ("min_size:1MB,min_size:2MB", None, "setting 'min_size' given twice"),
    ("page_sizes:[2M", None, "unclosed '['"),
    (":3", None, "empty setting name"),
    (3, None, "config must be a dict"),
])
def test_bad_settings_name_the_setting_and_what_is_allowed(config, overrides, expected):
    with pytest.raises(ConfigError) as e:
        resolve(config, overrides)
    assert expected in str(e.value)


def test_a_bad_toml_file_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("min_size = = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        resolve(str(path))


def test_install_rejects_a_bad_setting_and_leaves_the_allocator_off(python):
    r = python("""
        try:
            hpa.install(page_sizes=["3M"])
        except hpa.ConfigError as e:
            report(error=str(e), installed=hpa.is_installed(), isvalue=isinstance(e, ValueError))
    """)
    assert "page_sizes" in r["error"] and r["installed"] is False and r["isvalue"]


def test_the_readme_settings_table_is_generated_from_the_settings_table():
    import os

    from hugepage_allocator._settings import markdown_table

    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(readme) as f:
        assert markdown_table() in f.read(), "regenerate the README's table with _settings.markdown_table()"


@pytest.mark.parametrize("text,expected", [
    ("local", ("local", ())), ("interleave", ("interleave", ())), ("interleave:0-3", ("interleave", (0, 1, 2, 3))),
    ("bind:1", ("bind", (1,))), ("bind:0+2", ("bind", (0, 2))), ("bind:0,2", ("bind", (0, 2))),
    (" Preferred : 3 ", ("preferred", (3,))), ("auto", None),
])
def test_numa_policy_values(text, expected):
    assert resolve(None, {"numa_policy": text})["numa_policy"] == expected


def test_numa_policy_in_the_inline_grammar_and_toml(tmp_path):
    assert resolve("numa_policy:bind:1,min_size:1MB")["numa_policy"] == ("bind", (1,))
    path = tmp_path / "numa.toml"
    path.write_text('numa_policy = "interleave:0,1"\n')
    assert resolve(str(path))["numa_policy"] == ("interleave", (0, 1))


@pytest.mark.parametrize("value,expected", [
    ("nearest", "'nearest' names no placement mode (local, preferred, bind, interleave, auto)"),
    ("bind", "bind needs nodes, e.g. 'bind:1'"),
    ("preferred:0-1", "preferred takes one node, not '0-1'"),
    ("local:1", "local takes no nodes"),
    ("bind:x", "'x' is not a node list"),
    ("bind:3-1", "'3-1' is an empty range"),
    ("bind:64", "node 64 is beyond the 64 nodes supported"),
    (1, "a string such as 'local' or 'bind:1', not int"),
])
def test_bad_numa_policies_say_what_is_allowed(value, expected):
    with pytest.raises(ConfigError) as e:
        resolve(None, {"numa_policy": value})
    assert expected in str(e.value) and "allowed: local, interleave" in str(e.value)


def test_install_refuses_a_node_that_is_not_online(python):
    r = python("""
        error = None
        try:
            hpa.install(numa_policy="bind:7")
        except hpa.ConfigError as e:
            error = str(e)
        refused_installed = hpa.is_installed()
        hpa.install(numa_policy="bind:0")
        report(error=error, refused_installed=refused_installed, placement=hpa.placement(),
               installed=hpa.is_installed())
    """)
    assert "names node 7, which is not an online NUMA node" in r["error"]
    assert r["refused_installed"] is False
    assert r["placement"] == "bind:0" and r["installed"] is True
