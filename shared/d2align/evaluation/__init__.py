"""Evaluation: detectron2's COCOEvaluator plus AP at IoU 0.5/0.6/0.7/0.8/0.9."""

from .coco import AP_IOU_THRESHOLDS, D2AlignCOCOEvaluator, ap_at_iou_thresholds

__all__ = ["AP_IOU_THRESHOLDS", "D2AlignCOCOEvaluator", "ap_at_iou_thresholds"]
