"""Build script. The compiled extension (csrc/) is optional: a pure-Python install always works.

SIMATTR_NO_EXT=1 skips the extension; SIMATTR_BUILD_CUDA=1 adds the CUDA sources (csrc/cuda) when a CUDA toolkit
and a CUDA build of torch are found.
"""
import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
sources = sorted(glob.glob("csrc/cpu/*.cpp"))
if sources and os.environ.get("SIMATTR_NO_EXT", "0") != "1":
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

        # a CUDA toolkit and a CUDA build of torch (the CPU wheel's c10/cuda headers are incomplete)
        use_cuda = (os.environ.get("SIMATTR_BUILD_CUDA", "0") == "1" and CUDA_HOME is not None
                    and torch.version.cuda is not None)
        # CUDA kernels (*.cu, torch-free) and their torch operators (*.cpp), compiled only in CUDA builds
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp")) if use_cuda else []
        kind = CUDAExtension if cuda_sources else CppExtension
        ext_modules.append(kind(
            "simattr._C", sources + cuda_sources,
            include_dirs=[os.path.abspath("csrc/cuda")],
            define_macros=[("SIMATTR_WITH_CUDA", "1")] if cuda_sources else [],
            extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3"]} if cuda_sources else ["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        ))
        cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)
    except Exception as exc:  # no torch or no compiler at build time: install pure Python
        print(f"simattr: skipping the compiled extension ({exc})")

setup(ext_modules=ext_modules, cmdclass=cmdclass)
