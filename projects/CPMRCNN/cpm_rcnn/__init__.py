"""CPM R-CNN (Zhu et al., "CPM R-CNN: Calibrating Point-guided Misalignment in Object
Detection") on detectron2: cascade grid-guided localization (Cascade Mapping Module), IoU
Scoring Module, Resampling Scoring Module and the fused score.

Importing the package registers `CPMROIHeads` in detectron2's ROI_HEADS_REGISTRY
(`MODEL.ROI_HEADS.NAME`) and `ClassificationOutputLayers` in d2align's BOX_PREDICTOR_REGISTRY
(`MODEL.ROI_BOX_HEAD.PREDICTOR`). With `MODEL.CPM_RCNN.NUM_STAGES: 1` and the scoring modules
off it is Grid R-CNN's grid branch beside a Faster R-CNN classification branch.
"""

from .cascade import fused_score, select_stage_boxes, stage_loss_weights
from .classifier import ClassificationOutputLayers
from .config import add_cpm_rcnn_config, check_cpm_rcnn_config
from .grid_coder import (
    decode_grid_heatmaps,
    grid_heatmap_loss,
    grid_heatmap_targets,
    grid_point_layout,
    grid_points,
    heatmap_to_image,
    image_to_heatmap,
    mapped_regions,
    point_regions,
)
from .grid_head import GridHead
from .roi_heads import CPMROIHeads

__all__ = [
    "add_cpm_rcnn_config",
    "check_cpm_rcnn_config",
    "ClassificationOutputLayers",
    "CPMROIHeads",
    "GridHead",
    "fused_score",
    "select_stage_boxes",
    "stage_loss_weights",
    "grid_point_layout",
    "grid_points",
    "mapped_regions",
    "point_regions",
    "image_to_heatmap",
    "heatmap_to_image",
    "grid_heatmap_targets",
    "decode_grid_heatmaps",
    "grid_heatmap_loss",
]
