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


def require_ext(op_name: str) -> None:
    """Raise a clear error if the compiled op `op_name` is not available."""
    if _C is None:
        raise RuntimeError(
            f"d2align op '{op_name}' needs the compiled extension d2align._C, which failed to "
            f"load ({_LOAD_ERROR}). Build it with `bash scripts/env.sh` or "
            "`pip install --no-build-isolation -e .` from the repository root."
        )
