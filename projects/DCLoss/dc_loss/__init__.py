"""DC Loss: Dynamic Coefficient loss, IoU-classification-aware assignment and CL-balanced NMS
on detectron2's RetinaNet.

Importing this package registers `DCLossRetinaNet` in detectron2's META_ARCH_REGISTRY.
"""

from .assignment import iac_assignment, iac_scores
from .config import add_dc_loss_config, check_dc_loss_config
from .dynamic_coefficient import dynamic_coefficient, normalize_coefficient
from .meta_arch import DCLossRetinaNet

__all__ = [
    "DCLossRetinaNet",
    "add_dc_loss_config",
    "check_dc_loss_config",
    "dynamic_coefficient",
    "iac_assignment",
    "iac_scores",
    "normalize_coefficient",
]
