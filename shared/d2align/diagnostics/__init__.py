"""Detector-agnostic diagnostics (misalignment of classification and localization)."""

from .dataset import MisalignmentAccumulator, coco_results_misalignment
from .misalignment import (
    IOU_BIN_EDGES,
    localization_correlation,
    match_detections_to_gt,
    plot_positives_by_iou,
    plot_score_vs_iou,
    positives_by_iou,
)

__all__ = [
    "IOU_BIN_EDGES",
    "MisalignmentAccumulator",
    "coco_results_misalignment",
    "localization_correlation",
    "match_detections_to_gt",
    "plot_positives_by_iou",
    "plot_score_vs_iou",
    "positives_by_iou",
]
