"""`MutualGuidanceRetinaNet`: the shared RetinaNet base with Mutual Guidance's assignment.

Only the anchor assignment differs from `d2align.modeling.D2AlignRetinaNet`: `assign_anchors`
labels the anchors with `mutual_guidance.assignment.assign_anchors`, which may look at the
detached predictions. The losses are the base's, as the configs set them: focal loss on the
classification labels, balanced L1 (`MODEL.D2ALIGN_RETINANET.BBOX_REG_LOSS_TYPE
"balanced_l1"`) on the regression anchors, both divided by the moving average of the number of
classification positives. Inference is the base's (detectron2's RetinaNet with the default
`MODEL.D2ALIGN_RETINANET.NMS_TYPE "standard"`).

Shapes: N images, R anchors per image (all levels), K classes, Hi x Wi x Ai anchors per level.
"""

from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances
from torch import Tensor

from d2align.modeling import D2AlignRetinaNet

from .assignment import assign_anchors, needs_predictions
from .config import check_mutual_guidance_config

__all__ = ["MutualGuidanceRetinaNet"]


@META_ARCH_REGISTRY.register()
class MutualGuidanceRetinaNet(D2AlignRetinaNet):
    """RetinaNet trained with the static, Localize-to-Classify, Classify-to-Localize or Mutual
    Guidance label assignment (Mutual Guidance, Sec. 3); overrides `assign_anchors` only.
    """

    @configurable
    def __init__(
        self,
        *,
        assignment: str = "mutual_guidance",
        sigma: float = 2.0,
        iou_thresholds: Tuple[float, float] = (0.4, 0.5),
        **kwargs,
    ):
        """
        Args:
            assignment: "static", "localize_to_classify", "classify_to_localize" or
                "mutual_guidance" (see `mutual_guidance.assignment`).
            sigma: sigma of Eq. (1), > 1.
            iou_thresholds: (negative, positive) IoU_anchor thresholds of the static rule.
            kwargs: `D2AlignRetinaNet` arguments (losses, NMS, detectron2's RetinaNet).
        """
        super().__init__(**kwargs)
        self.use_pred_boxes, self.use_pred_scores = needs_predictions(assignment)
        self.assignment = assignment
        self.sigma = sigma
        self.iou_thresholds = tuple(iou_thresholds)

    @classmethod
    def from_config(cls, cfg):
        check_mutual_guidance_config(cfg)
        ret = super().from_config(cfg)
        mg = cfg.MODEL.MUTUAL_GUIDANCE
        ret.update(
            assignment=mg.ASSIGNMENT,
            sigma=mg.SIGMA,
            iou_thresholds=tuple(cfg.MODEL.RETINANET.IOU_THRESHOLDS),
        )
        return ret

    @torch.no_grad()
    def assign_anchors(
        self,
        anchors: List[Boxes],
        gt_instances: List[Instances],
        pred_logits: List[Tensor],
        pred_anchor_deltas: List[Tensor],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Training targets of every image, with the configured assignment rule.

        Args:
            anchors: #levels Boxes, (Hi * Wi * Ai, 4) each.
            gt_instances: N Instances with gt_boxes and gt_classes.
            pred_logits, pred_anchor_deltas: #levels tensors, (N, Hi * Wi * Ai, K or 4).

        Returns:
            gt_labels: N tensors (R,) int64 in {-1, 0, ..., K} (classification labels).
            gt_boxes: N tensors (R, 4), the box each anchor regresses to (valid where
                reg_mask).
            reg_masks: N tensors (R,) bool, anchors trained for regression.
        """
        anchors = Boxes.cat(anchors).tensor  # (R, 4)
        logits = cat(pred_logits, dim=1) if self.use_pred_scores else None
        deltas = cat(pred_anchor_deltas, dim=1) if self.use_pred_boxes else None
        gt_labels, gt_boxes, reg_masks = [], [], []
        for i, gt in enumerate(gt_instances):
            pred_boxes = (
                self.box2box_transform.apply_deltas(deltas[i].detach(), anchors)
                if deltas is not None
                else None
            )
            pred_scores = logits[i].detach().sigmoid() if logits is not None else None
            labels, matched, reg_mask = assign_anchors(
                anchors,
                gt.gt_boxes.tensor,
                gt.gt_classes,
                pred_boxes,
                pred_scores,
                num_classes=self.num_classes,
                assignment=self.assignment,
                sigma=self.sigma,
                iou_thresholds=self.iou_thresholds,
            )
            gt_labels.append(labels)
            boxes = gt.gt_boxes.tensor
            gt_boxes.append(boxes[matched] if len(gt) > 0 else torch.zeros_like(anchors))
            reg_masks.append(reg_mask)
        return gt_labels, gt_boxes, reg_masks
