#!/usr/bin/env python
"""Installs `d2align` (from shared/), its compiled ops `d2align._C` (from csrc/), and each
project package as `d2align.projects.<name>` (from projects/<Name>/<name>/).

The C++ (CPU) kernels are always built; the CUDA kernels are added when torch sees a GPU and
CUDA_HOME is set, or when FORCE_CUDA=1.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))

# folder under projects/ -> its package (snake_case of the folder)
PROJECTS = {
    "CPMRCNN": "cpm_rcnn",
    "IoUNet": "iou_net",
    "MutualGuidance": "mutual_guidance",
    "OffsetBin": "offset_bin",
    "DCLoss": "dc_loss",
}


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
    packages = {"d2align": "shared"}
    for sub in find_packages("shared"):
        packages["d2align." + sub] = os.path.join("shared", *sub.split("."))
    for folder, name in PROJECTS.items():
        pkg_dir = os.path.join("projects", folder, name)
        if os.path.isdir(pkg_dir):
            for sub in [name] + [name + "." + s for s in find_packages(pkg_dir)]:
                packages["d2align.projects." + sub] = os.path.join(
                    "projects", folder, *sub.split(".")
                )
    return packages


PACKAGES = get_packages()

setup(
    name="d2align",
    version="0.1.0",
    description="detectron2 projects on the misalignment of classification and localization",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
