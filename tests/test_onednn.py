"""oneDNN frees its buffers through whatever CPU allocator is current (raw_deallocate): buffers made
on one side of install()/uninstall() and freed on the other must work, with the default's results."""


def test_conv2d_and_mkldnn_tensors_across_install_and_uninstall(pools, python):
    pools.ensure_free("2M", 128)
    r = python("""
        torch.manual_seed(0)
        x = torch.randn(4, 16, 64, 64)
        w = torch.randn(32, 16, 3, 3)
        conv = lambda: torch.nn.functional.conv2d(x, w, padding=1)
        mk = lambda t: (t.to_mkldnn() + t.to_mkldnn()).to_dense()
        reference = conv()
        reference_mk = mk(x)
        made_before = x.to_mkldnn()                  # allocated by the default allocator

        hpa.install()
        results = {"conv installed": torch.equal(conv(), reference),
                   "mkldnn installed": torch.equal(mk(x), reference_mk)}
        del made_before                               # freed through our deleter: forwarded
        made_during = x.to_mkldnn()
        big = torch.nn.functional.conv2d(torch.randn(8, 16, 128, 128), w, padding=1)  # on huge pages
        results["conv on huge pages"] = kernel.page_size_kb(big.data_ptr()) == 2048

        hpa.uninstall()
        results["conv uninstalled"] = torch.equal(conv(), reference)
        results["mkldnn uninstalled"] = torch.equal(mk(x), reference_mk)
        results["made during, read after"] = torch.equal(made_during.to_dense(), x)
        del made_during, big                           # ours, freed after uninstall()
        hpa.install()
        results["conv reinstalled"] = torch.equal(conv(), reference)
        report(**results)
    """)
    assert r.values == {k: True for k in r.values}, r.values
    assert len(r.values) == 7
