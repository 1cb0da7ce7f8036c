"""Box utilities shared by the projects: IoU, IoU-Net box jittering and box refinement."""

from .box_ops import aligned_iou, pairwise_iou, proposal_iou_targets
from .jitter import sample_jittered_boxes
from .refine import refine_boxes

__all__ = [
    "aligned_iou",
    "pairwise_iou",
    "proposal_iou_targets",
    "refine_boxes",
    "sample_jittered_boxes",
]
