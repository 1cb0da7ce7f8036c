"""IoU-Net (Jiang et al., "Acquisition of Localization Confidence for Accurate Object
Detection", ECCV 2018) on detectron2.

Importing the package registers `IoUNetROIHeads` (ROI_HEADS_REGISTRY), `FCIoUHead`
(ROI_IOU_HEAD_REGISTRY) and `StandaloneIoUNet` (META_ARCH_REGISTRY).
"""
from .config import add_iou_net_config
from .iou_head import FCIoUHead, IoUBranch, build_iou_head
from .postprocess import IoUNetPostProcessor
from .roi_heads import IoUNetROIHeads
from .standalone import DetectorWithIoUNet, StandaloneIoUNet

__all__ = [
    "add_iou_net_config",
    "FCIoUHead",
    "IoUBranch",
    "build_iou_head",
    "IoUNetPostProcessor",
    "IoUNetROIHeads",
    "StandaloneIoUNet",
    "DetectorWithIoUNet",
]
