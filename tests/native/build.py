"""Builds hpa_testing, the tests' and benchmarks' native module (testing.cpp), in place:

    python tests/native/build.py        (./run does it before the tests and the benchmarks)

It compiles the core's sources (csrc/, all but the torch-facing allocator and bindings) once more,
with HPA_LOCK_CHECKS (Note [Lock checks], csrc/sync.h), beside the fake OS layer and the timers,
into tests/native/hpa_testing*.so. The product (setup.py) carries none of it. Build it with the
environment's torch (no build isolation), as the product is.
"""
import glob
import os
import platform
import sys

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRODUCT_ONLY = ("csrc/allocator.cpp", "csrc/bindings.cpp")


def main() -> None:
    os.chdir(ROOT)  # setuptools wants source paths relative to the project
    core = [f for f in sorted(glob.glob("csrc/*.cpp")) if f not in PRODUCT_ONLY]
    flags = ["-std=c++20", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden", "-O2", "-g0", "-DHPA_LOCK_CHECKS"]
    if platform.machine() == "x86_64":
        flags.append("-mtls-dialect=gnu2")  # as setup.py: the thread-cache lookup from a dlopen'ed module
    ext = CppExtension(
        name="tests.native.hpa_testing",  # lands in tests/native/; the module itself is `hpa_testing`
        sources=core + sorted(glob.glob("tests/native/*.cpp")),
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "tests", "native")],
        extra_compile_args=flags,
    )
    setup(
        name="hpa-testing",
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension},
        script_args=["-q", "build_ext", "--inplace", "--build-temp", os.path.join("build", "testing")] + sys.argv[1:],
    )


if __name__ == "__main__":
    main()
