"""Compiled ops of d2align (C++ on CPU, CUDA on GPU) and their Python wrappers."""

from ._ext import compiled_with_cuda
from .nms import batched_cl_balanced_nms, batched_iou_guided_nms, batched_soft_nms
from .nms_reference import (
    cl_balanced_nms_reference,
    iou_guided_nms_reference,
    soft_nms_reference,
)
from .poolers import PrRoIPooler, build_roi_pooler
from .prroi_pool import PrRoIPool, prroi_pool, prroi_pool_reference

__all__ = [
    "compiled_with_cuda",
    "prroi_pool",
    "PrRoIPool",
    "prroi_pool_reference",
    "PrRoIPooler",
    "build_roi_pooler",
    "batched_iou_guided_nms",
    "batched_soft_nms",
    "batched_cl_balanced_nms",
    "iou_guided_nms_reference",
    "soft_nms_reference",
    "cl_balanced_nms_reference",
]
