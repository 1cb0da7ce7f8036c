"""IoU-Net (Jiang et al., "Acquisition of Localization Confidence for Accurate Object
Detection", ECCV 2018) on detectron2.

Importing the package registers `IoUNetROIHeads` (ROI_HEADS_REGISTRY) and `StandaloneIoUNet`
(META_ARCH_REGISTRY). The IoU head (`FCIoUHead`, ROI_IOU_HEAD_REGISTRY), its targets and loss
are the shared ones of `d2align.modeling`.
"""

from .config import add_iou_net_config
from .iou_branch import IoUBranch
from .postprocess import IoUNetPostProcessor
from .roi_heads import IoUNetROIHeads
from .standalone import DetectorWithIoUNet, StandaloneIoUNet

__all__ = [
    "add_iou_net_config",
    "IoUBranch",
    "IoUNetPostProcessor",
    "IoUNetROIHeads",
    "StandaloneIoUNet",
    "DetectorWithIoUNet",
]
