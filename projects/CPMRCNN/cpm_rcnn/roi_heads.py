"""CPM R-CNN ROI heads (Fig. 2): a classification branch (Faster R-CNN's, without box
regression), the cascade grid branch (Cascade Mapping Module, `grid_cascade.py`), the scoring
network (IoU / Resampling Scoring Modules, `scoring.py`) and the inference with the fused score
(`postprocess.py`). This module holds the construction from the config and the training step.

Training (§3.2-3.4): the classification branch is Faster R-CNN's on the sampled proposals; the
grid stages train on the boxes above their IoU thresholds (`GridCascadeMixin.grid_losses`); the
ISM and RSM on the last stage's boxes (`ScoringModulesMixin.scoring_losses`).

Shape legend:
    N: images; R: boxes over the batch; R_i: of image i
    K: foreground classes; G: grid points; S: heatmap side

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, build_box_head
from detectron2.structures import ImageList, Instances
from torch import nn

from d2align.config import check_choice, check_config
from d2align.modeling import D2AlignStandardROIHeads, build_box_pooler, build_iou_head

from .cascade import stage_loss_weights
from .classifier import ClassificationOutputLayers
from .config import TEST_SCORES, check_cpm_rcnn_config
from .grid_cascade import GridCascadeMixin
from .grid_head import GridHead
from .postprocess import CPMInferenceMixin
from .scoring import ScoringModulesMixin

__all__ = ["CPMROIHeads"]


@ROI_HEADS_REGISTRY.register()
class CPMROIHeads(
    GridCascadeMixin, ScoringModulesMixin, CPMInferenceMixin, D2AlignStandardROIHeads
):
    """Classification branch + cascade grid branch + ISM + RSM, fused score at inference.

    Detections carry `pred_boxes` (the returned stage's boxes), `scores` (the fused score),
    `pred_classes`, `cls_scores` (classification confidence), and `pred_ious` (ISM) /
    `rsm_scores` (RSM) when those modules are enabled.
    """

    @configurable
    def __init__(
        self,
        *,
        grid_in_features: List[str],
        grid_pooler: nn.Module,
        grid_heads: List[GridHead],
        mapping_ratios: List[float],
        iou_thresholds: List[float],
        grid_loss_weight: float,
        target_radius: float,
        test_stage: int,
        gamma: float,
        test_score: str = "fused",
        add_gt_to_stages: bool = True,
        ism_head: Optional[nn.Module] = None,
        ism_loss_type: str = "l2",
        ism_loss_weight: float = 1.0,
        rsm_head: Optional[nn.Module] = None,
        rsm_predictor: Optional[ClassificationOutputLayers] = None,
        rsm_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            grid_in_features (list[str]): feature maps the grid branch pools from.
            grid_pooler (nn.Module): pooler of the grid branch (S x S, S = 14).
            grid_heads (list[GridHead]): g_j, one per stage.
            mapping_ratios (list[float]): M_j, one per stage.
            iou_thresholds (list[float]): S_j's IoU thresholds, one per stage.
            grid_loss_weight (float): omega of eq. 2.
            target_radius (float): radius of the heatmap targets' discs, in cells.
            test_stage (int): stage (1-based) whose boxes inference returns.
            gamma (float): of the fused score (eq. 4).
            test_score (str): what ranks the detections: "fused" (eq. 4) or "cls" (the
                classification confidence alone).
            add_gt_to_stages (bool): in training, append each image's ground-truth boxes to
                the candidates of every stage j > 1 (stage 1's proposals hold them already).
            ism_head (nn.Module or None): IoU Scoring Module on the last stage's 7x7 grid
                features (None: no ISM).
            ism_loss_type (str): "l2", "l1" or "smooth_l1" (eq. 7).
            ism_loss_weight (float): alpha_2.
            rsm_head, rsm_predictor (nn.Module or None): box head and classifier of the
                Resampling Scoring Module (None: no RSM).
            rsm_loss_weight (float): alpha_1.
            kwargs: arguments of `StandardROIHeads`.
        """
        super().__init__(**kwargs)
        if not (len(grid_heads) == len(mapping_ratios) == len(iou_thresholds) >= 1):
            raise ValueError(
                f"{len(grid_heads)} grid heads, {len(mapping_ratios)} mapping ratios and "
                f"{len(iou_thresholds)} IoU thresholds: one of each per stage"
            )
        if not 1 <= test_stage <= len(grid_heads):
            raise ValueError(f"test_stage {test_stage} not in [1, {len(grid_heads)}]")
        check_choice("test_score", test_score, TEST_SCORES)
        self.grid_in_features = grid_in_features
        self.grid_pooler = grid_pooler
        self.grid_heads = nn.ModuleList(grid_heads)
        self.mapping_ratios = list(mapping_ratios)
        self.iou_thresholds = list(iou_thresholds)
        self.stage_weights = stage_loss_weights(len(grid_heads))
        self.grid_loss_weight = grid_loss_weight
        self.target_radius = target_radius
        self.test_stage = test_stage
        self.gamma = gamma
        self.test_score = test_score
        self.add_gt_to_stages = add_gt_to_stages
        self.ism_head = ism_head
        self.ism_loss_type = ism_loss_type
        self.ism_loss_weight = ism_loss_weight
        self.rsm_head = rsm_head
        self.rsm_predictor = rsm_predictor
        self.rsm_loss_weight = rsm_loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        check_cpm_rcnn_config(cfg)
        predictor = cfg.MODEL.ROI_BOX_HEAD.PREDICTOR
        check_config(
            predictor == "ClassificationOutputLayers",
            "MODEL.ROI_BOX_HEAD.PREDICTOR",
            predictor,
            "CPMROIHeads localizes with the grid branch: the classification branch must be "
            "'ClassificationOutputLayers'",
        )
        for key in ("MASK_ON", "KEYPOINT_ON"):
            check_config(not cfg.MODEL[key], "MODEL." + key, True, "CPMROIHeads detects boxes")
        ret = super().from_config(cfg, input_shape)
        c, g = cfg.MODEL.CPM_RCNN, cfg.MODEL.CPM_RCNN.GRID_HEAD
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        grid_pooler, channels = build_box_pooler(
            input_shape,
            in_features,
            g.POOLER_RESOLUTION,
            g.POOLER_SAMPLING_RATIO,
            g.POOLER_TYPE,
            features_key="MODEL.ROI_HEADS.IN_FEATURES",
        )
        pooled = ShapeSpec(channels=channels, height=g.POOLER_RESOLUTION, width=g.POOLER_RESOLUTION)
        grid_heads = [GridHead(cfg, pooled) for _ in range(c.NUM_STAGES)]
        ret.update(
            grid_in_features=in_features,
            grid_pooler=grid_pooler,
            grid_heads=grid_heads,
            mapping_ratios=list(c.MAPPING_RATIOS),
            iou_thresholds=list(c.IOU_THRESHOLDS),
            grid_loss_weight=c.GRID_LOSS_WEIGHT,
            target_radius=g.TARGET_RADIUS,
            test_stage=c.TEST_STAGE or c.NUM_STAGES,
            gamma=c.FUSED_SCORE_GAMMA,
            test_score=c.TEST_SCORE,
            add_gt_to_stages=c.ADD_GT_TO_STAGES,
            ism_loss_type=c.ISM.LOSS_TYPE,
            ism_loss_weight=c.ISM.LOSS_WEIGHT,
            rsm_loss_weight=c.RSM.LOSS_WEIGHT,
        )
        if c.ISM.ENABLED:
            ret["ism_head"] = build_iou_head(cfg, grid_heads[-1].feature_shape)
        if c.RSM.ENABLED:
            box_side = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
            rsm_head = build_box_head(
                cfg, ShapeSpec(channels=channels, height=box_side, width=box_side)
            )
            ret["rsm_head"] = rsm_head
            ret["rsm_predictor"] = ClassificationOutputLayers(cfg, rsm_head.output_shape)
        return ret

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See `StandardROIHeads.forward`. Training losses: "loss_cls" (classification
        branch), "loss_grid_stage{j}" (beta_j omega L_BCE), "loss_ism", "loss_rsm"."""
        del images
        if not self.training:
            return self._forward_box(features, proposals), {}
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals)
        grid_losses, final = self.grid_losses(features, proposals, targets)
        losses.update(grid_losses)
        losses.update(self.scoring_losses(features, proposals, final, targets))
        return proposals, losses

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Training: {"loss_cls"} of the classification branch. Inference: the detections
        of every image (`CPMInferenceMixin.inference`)."""
        if not self.training:
            return self.inference(features, proposals, self.classify(features, proposals))
        box_features = self.box_head(
            self.pool_box(features, [p.proposal_boxes.tensor for p in proposals])
        )
        return self.box_predictor.losses(self.box_predictor(box_features), proposals)
