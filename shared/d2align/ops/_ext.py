"""Loads the compiled extension `d2align._C` (registering `torch.ops.d2align.*`).

If the extension was not built, importing d2align still works; calling a compiled op raises
an error that names the op and says how to build it.
"""

import torch  # noqa: F401  (libtorch must be loaded before the extension)

try:
    from d2align import _C

    _LOAD_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    _C = None
    _LOAD_ERROR = e


def compiled_with_cuda() -> bool:
    """Whether d2align._C was built with its CUDA kernels."""
    return _C is not None and _C.compiled_with_cuda()


def require_ext(op_name: str, device: torch.device = None) -> None:
    """Raise a clear error if the compiled op `op_name` is not available (on `device`, for an
    op with CUDA kernels: a build without them cannot run it on a GPU)."""
    if _C is not None and device is not None and device.type == "cuda" and not compiled_with_cuda():
        raise RuntimeError(
            f"d2align op '{op_name}' got CUDA tensors, but d2align._C was built without CUDA "
            "kernels (no nvcc or a CPU-only torch at build time, or FORCE_CUDA=0). Rebuild it "
            "where nvcc and a CUDA build of torch are present: `FORCE_CUDA=1 bash "
            "scripts/env.sh` (no GPU is needed to build)."
        )
    if _C is None:
        raise RuntimeError(
            f"d2align op '{op_name}' needs the compiled extension d2align._C, which failed to "
            f"load ({_LOAD_ERROR}). Build it with `bash scripts/env.sh` or "
            "`pip install --no-build-isolation -e .` from the repository root."
        )
