#!/usr/bin/env python
"""Installs `d2align` (from shared/d2align/), its compiled ops `d2align._C` (from csrc/), and each
project package as `d2align.projects.<package>` (from projects/<Folder>/<package>/).

The C++ (CPU) kernels are always built; the CUDA kernels are added when torch sees a GPU and
CUDA_HOME is set, or when FORCE_CUDA=1.
"""

import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "shared"))
from d2align.projects import discover_projects  # noqa: E402  (stdlib only; the one project map)


def get_extensions():
    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
    extension, define_macros = CppExtension, []
    extra_compile_args = {"cxx": ["-O3"]}
    with_cuda = torch.cuda.is_available() and CUDA_HOME is not None
    if with_cuda or os.getenv("FORCE_CUDA", "0") == "1":
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    return [
        extension(
            "d2align._C",
            [os.path.relpath(s, ROOT) for s in sources],
            include_dirs=[csrc],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
        )
    ]


def get_packages():
    """The library's packages (src layout under shared/) and each project's package, mapped to
    their folders."""
    packages = {"": "shared"}
    names = find_packages("shared")
    for folder, name in discover_projects(os.path.join(ROOT, "projects")).items():
        pkg_dir = os.path.join("projects", folder, name)
        for sub in [name] + [name + "." + s for s in find_packages(pkg_dir)]:
            packages["d2align.projects." + sub] = os.path.join("projects", folder, *sub.split("."))
    return names + [p for p in packages if p], packages


PACKAGES, PACKAGE_DIR = get_packages()

setup(
    name="d2align",
    version="0.1.0",
    description="detectron2 projects on the misalignment of classification and localization",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
