"""Mutual Guidance (Zhang et al., ACCV 2020) label assignment on detectron2.

Importing this package registers `MutualGuidanceRetinaNet` in detectron2's META_ARCH_REGISTRY.
"""

from .assignment import assign_anchors, iou_amplified
from .config import ASSIGNMENTS, add_mutual_guidance_config
from .meta_arch import MutualGuidanceRetinaNet

__all__ = [
    "ASSIGNMENTS",
    "MutualGuidanceRetinaNet",
    "add_mutual_guidance_config",
    "assign_anchors",
    "iou_amplified",
]
