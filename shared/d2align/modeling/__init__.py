"""d2align.modeling: modeling pieces shared by the projects (ROI heads with the shared box
pooler and box predictor registry, the offset bin coder, IoU heads and their targets and loss,
inference) and the RetinaNet base with overridable assignment, losses and NMS."""

from .bin_coder import OffsetBinCoder
from .box_predictor import BOX_PREDICTOR_REGISTRY, build_box_predictor
from .cascade_rcnn import D2AlignCascadeROIHeads
from .iou_head import ROI_IOU_HEAD_REGISTRY, FCIoUHead, build_iou_head
from .iou_targets import (
    decode_iou,
    encode_iou,
    proposal_iou_training_boxes,
    sample_iou_training_boxes,
    select_class_iou,
)
from .losses import IOU_LOSS_TYPES, iou_prediction_loss
from .poolers import build_box_pooler, build_roi_box_pooler
from .postprocessing import NMS_TYPES, SCORE_NMS_TYPES, nms_settings_from_config, per_class_nms
from .retinanet import BBOX_REG_LOSS_TYPES, D2AlignRetinaNet, check_d2align_retinanet_config
from .roi_heads_base import D2AlignStandardROIHeads, per_class_candidates

__all__ = [
    "BOX_PREDICTOR_REGISTRY",
    "build_box_predictor",
    "OffsetBinCoder",
    "build_box_pooler",
    "build_roi_box_pooler",
    "D2AlignStandardROIHeads",
    "D2AlignCascadeROIHeads",
    "per_class_candidates",
    "ROI_IOU_HEAD_REGISTRY",
    "FCIoUHead",
    "build_iou_head",
    "encode_iou",
    "decode_iou",
    "select_class_iou",
    "sample_iou_training_boxes",
    "proposal_iou_training_boxes",
    "IOU_LOSS_TYPES",
    "iou_prediction_loss",
    "NMS_TYPES",
    "SCORE_NMS_TYPES",
    "nms_settings_from_config",
    "per_class_nms",
    "BBOX_REG_LOSS_TYPES",
    "D2AlignRetinaNet",
    "check_d2align_retinanet_config",
]
