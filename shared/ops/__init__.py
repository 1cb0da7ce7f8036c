"""Compiled ops of d2align (C++ on CPU, CUDA on GPU) and their Python wrappers."""
from ._ext import compiled_with_cuda
from .poolers import PrRoIPooler, build_roi_pooler
from .prroi_pool import PrRoIPool, prroi_pool, prroi_pool_reference

__all__ = [
    "compiled_with_cuda",
    "prroi_pool",
    "PrRoIPool",
    "prroi_pool_reference",
    "PrRoIPooler",
    "build_roi_pooler",
]
