"""to_hugepages() outside a real loader: its error without install(), and progress on stderr."""


def test_to_hugepages_needs_install_and_can_report_progress(pools, python):
    pools.ensure_free("2M", 16)
    r = python("""
        weights = {"w": torch.randn(1 << 20), "b": torch.randn(16)}
        try:
            hpa.to_hugepages(weights)
        except RuntimeError as e:
            error = str(e)
        hpa.install()
        same = hpa.to_hugepages(weights, progress=True) is weights
        report(error=error, same=same, pages=kernel.page_size_kb(weights["w"].data_ptr()))
    """)
    assert "install() first" in r["error"]
    assert r["same"] and r["pages"] == 2048
    assert "MiB of weights on huge pages" in r.stderr
