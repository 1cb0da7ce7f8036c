"""Compiled ops of d2align (C++ on CPU, CUDA on GPU) and their Python wrappers."""
from ._ext import compiled_with_cuda

__all__ = ["compiled_with_cuda"]
