"""Build script. The compiled extension (csrc/) is optional: a pure-Python install always works.

SIMATTR_NO_EXT=1 skips the extension; SIMATTR_BUILD_CUDA=1 adds the CUDA sources when CUDA is found.
"""
import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
sources = sorted(glob.glob("csrc/cpu/*.cpp"))
if sources and os.environ.get("SIMATTR_NO_EXT", "0") != "1":
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

        use_cuda = os.environ.get("SIMATTR_BUILD_CUDA", "0") == "1" and CUDA_HOME is not None
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) if use_cuda else []
        kind = CUDAExtension if cuda_sources else CppExtension
        ext_modules.append(kind(
            "simattr._C", sources + cuda_sources,
            define_macros=[("SIMATTR_WITH_CUDA", "1")] if cuda_sources else [],
            extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3"]} if cuda_sources else ["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        ))
        cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)
    except Exception as exc:  # no torch or no compiler at build time: install pure Python
        print(f"simattr: skipping the compiled extension ({exc})")

setup(ext_modules=ext_modules, cmdclass=cmdclass)
