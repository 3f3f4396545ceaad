"""Build of hugepage_allocator: a Python package with one native module, hugepage_allocator._C.

Install into an environment that already has torch (2.5 or later), without build isolation so
that the build uses that torch and never downloads another:

    pip install --no-build-isolation .        (or -e . for development; DEBUG=1 for -O0 -g)
"""
import glob
import os
import platform

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension


def native_extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    # Hidden: the module exports its init function only (the tests' module, tests/native, holds
    # another copy of the core, which must not bind to this one's).
    flags = ["-std=c++20", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]
    if platform.machine() == "x86_64":
        # TLS descriptors: the thread-cache lookup on every allocation, from a module loaded with
        # dlopen, costs a few instructions instead of a call to __tls_get_addr (aarch64 has them
        # by default).
        flags.append("-mtls-dialect=gnu2")
    flags += ["-O0", "-g"] if debug else ["-O2", "-g0"]
    return CppExtension(
        name="hugepage_allocator._C",
        sources=sorted(glob.glob("csrc/*.cpp")),
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=flags,
    )


setup(
    ext_modules=[native_extension()],
    cmdclass={"build_ext": BuildExtension},
)
