#!/usr/bin/env python
"""Installs `d2align` (from shared/d2align/), its compiled ops `d2align._C` (from csrc/), and each
project package as `d2align.projects.<package>` (from projects/<Folder>/<package>/).

The C++ (CPU) kernels are always built. The CUDA kernels are added whenever they can be built:
a CUDA build of torch (`torch.version.cuda`) and a CUDA toolkit (`nvcc`, CUDA_HOME), whether or
not a GPU is visible (a cluster's login node has none); FORCE_CUDA=1 requires them (the build
fails without), FORCE_CUDA=0 leaves them out. Without a visible GPU and without
TORCH_CUDA_ARCH_LIST, they are compiled for `DEFAULT_CUDA_ARCHS`. The headers of CUDA's
libraries that torch's headers include (cuBLAS, cuSPARSE, ...) are taken from the toolkit or,
where a minimal toolkit lacks them, from the NVIDIA wheels that torch's CUDA build installed
(site-packages/nvidia/*/include). `python -c "import d2align.ops as o;
print(o.compiled_with_cuda())"` tells what a build has.
"""

import glob
import os
import shutil
import sys


def _find_cuda_home():
    """The CUDA toolkit's root for torch's extension builder, when CUDA_HOME / CUDA_PATH are not
    set: torch takes the parent of the folder of `nvcc` on PATH, which is wrong when `nvcc` is
    a wrapper or a link outside the toolkit (e.g. /usr/local/bin/nvcc running
    /usr/local/cuda-13.0/bin/nvcc: the link step then finds no libcudart). The first of that
    guess and /usr/local/cuda that holds libcudart is taken."""
    if os.getenv("CUDA_HOME") or os.getenv("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    guesses = ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) + [
        "/usr/local/cuda"
    ]
    for root in guesses:
        libs = glob.glob(os.path.join(root, "lib64", "libcudart.so*")) + glob.glob(
            os.path.join(root, "targets", "*", "lib", "libcudart.so*")
        )
        if libs and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = root
            return


_find_cuda_home()  # before torch.utils.cpp_extension reads it

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "shared"))
from d2align.projects import discover_projects  # noqa: E402  (stdlib only; the one project map)

# compute capabilities of the kernels built without a visible GPU: Turing to Hopper, and PTX
# for later GPUs (CUDA 13 supports 7.5 and newer)
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def cuda_build_wanted() -> bool:
    """Whether to compile the CUDA kernels (see the module docstring)."""
    force = os.getenv("FORCE_CUDA", "")
    if force == "0":
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if force == "1" and not possible:
        raise SystemExit(
            f"FORCE_CUDA=1 but the CUDA kernels cannot be built: torch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda is not None}), CUDA_HOME {CUDA_HOME}"
        )
    return possible


def wheel_cuda_include_dirs():
    """Include folders of the NVIDIA wheels next to torch (nvidia/<lib>/include, and
    nvidia/cu<N>/include in the CUDA 13 layout)."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    found = glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted(d for d in found if os.path.isdir(d))


def get_extensions():
    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
    extension, define_macros = CppExtension, []
    extra_compile_args = {"cxx": ["-O3"]}
    include_dirs = [csrc]
    if cuda_build_wanted():
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        # after the toolkit's own folders: only what the toolkit lacks comes from the wheels
        extra_compile_args["cxx"] += [f"-idirafter{d}" for d in wheel_cuda_include_dirs()]
        extra_compile_args["nvcc"] += [
            f"-Xcompiler=-idirafter{d}" for d in wheel_cuda_include_dirs()
        ]
        if not torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return [
        extension(
            "d2align._C",
            [os.path.relpath(s, ROOT) for s in sources],
            include_dirs=include_dirs,
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
    # D2ALIGN_PREBUILT_EXT=1: scripts/env.sh put a cached d2align._C in shared/d2align/
    ext_modules=[] if os.getenv("D2ALIGN_PREBUILT_EXT") == "1" else get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
