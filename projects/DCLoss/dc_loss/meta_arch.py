"""`DCLossRetinaNet`: the shared RetinaNet base with the DC Loss paper's three components.

    assign_anchors       IoU-classification-aware assignment (eq. 4-5, `dc_loss.assignment`)
                         when MODEL.DC_LOSS.IAC.ENABLED, else detectron2's IoU assignment;
                         regression on the classification positives either way.
    classification_loss  focal loss whose positive anchors are weighted by the normalised
                         dynamic coefficient lambda' (eq. 1-3, `dc_loss.dynamic_coefficient`)
                         when MODEL.DC_LOSS.DC.ENABLED; negatives unweighted.
    inference            the base's per-class NMS: CL-balanced NMS (eq. 6-7) with
                         MODEL.D2ALIGN_RETINANET.NMS_TYPE "cl_balanced".

With both components off and standard NMS this is detectron2's RetinaNet (Table 2's baseline).
The regression loss is the base's (detectron2's smooth L1 on the deltas by default).

Shapes: N images, R anchors per image (all levels), K classes, Hi x Wi x Ai anchors per level.
"""

from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor

from d2align.modeling import D2AlignRetinaNet

from .assignment import PROMOTE_CHOICES, iac_assignment
from .config import check_dc_loss_config
from .dynamic_coefficient import dynamic_coefficient, normalize_coefficient

__all__ = ["DCLossRetinaNet"]


@META_ARCH_REGISTRY.register()
class DCLossRetinaNet(D2AlignRetinaNet):
    """RetinaNet with IoU-classification-aware assignment and the DC loss (DC Loss paper,
    eq. 1-5); CL-balanced NMS is the base's NMS type. Overrides `assign_anchors` and
    `classification_loss` only.
    """

    @configurable
    def __init__(
        self,
        *,
        iac_enabled: bool = True,
        iac_alpha: float = 0.5,
        iac_score_thresh: float = 0.6,
        iac_promote: str = "ignored",
        dc_enabled: bool = True,
        dc_eps: float = 1e-6,
        iou_thresholds: Tuple[float, float] = (0.4, 0.5),
        **kwargs,
    ):
        """
        Args:
            iac_enabled (bool): IoU-classification-aware assignment (else detectron2's).
            iac_alpha (float): alpha of eq. 4, in [0, 1].
            iac_score_thresh (float): score_threshold of eq. 5, in (0, 1].
            iac_promote (str): which anchors eq. 5's score clause may make positive: "ignored"
                (bg <= IoU < fg) or "any" (negatives too); see `iac_assignment`.
            dc_enabled (bool): weight the positives' classification loss by lambda' (eq. 2).
            dc_eps (float): epsilon of eq. 1, >= 0.
            iou_thresholds (tuple[float, float]): (bg_threshold, fg_threshold) of eq. 5.
            kwargs: `D2AlignRetinaNet` arguments (losses, NMS, detectron2's RetinaNet).
        """
        super().__init__(**kwargs)
        if not 0.0 <= iac_alpha <= 1.0:
            raise ValueError(f"iac_alpha must be in [0, 1], got {iac_alpha}")
        if not 0.0 < iac_score_thresh <= 1.0:
            raise ValueError(f"iac_score_thresh must be in (0, 1], got {iac_score_thresh}")
        if iac_promote not in PROMOTE_CHOICES:
            raise ValueError(f"iac_promote must be one of {PROMOTE_CHOICES}, got {iac_promote!r}")
        if not dc_eps >= 0.0:
            raise ValueError(f"dc_eps must be >= 0, got {dc_eps}")
        self.iac_enabled = iac_enabled
        self.iac_alpha = iac_alpha
        self.iac_score_thresh = iac_score_thresh
        self.iac_promote = iac_promote
        self.dc_enabled = dc_enabled
        self.dc_eps = dc_eps
        self.iou_thresholds = tuple(iou_thresholds)

    @classmethod
    def from_config(cls, cfg):
        check_dc_loss_config(cfg)
        ret = super().from_config(cfg)
        c = cfg.MODEL.DC_LOSS
        ret.update(
            iac_enabled=c.IAC.ENABLED,
            iac_alpha=c.IAC.ALPHA,
            iac_score_thresh=c.IAC.SCORE_THRESH,
            iac_promote=c.IAC.PROMOTE,
            dc_enabled=c.DC.ENABLED,
            dc_eps=c.DC.EPS,
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
        """Training targets of every image: IAC (eq. 4-5) or, when disabled, detectron2's.
        Logs `num_iac_promoted_anchors` per image: the positives that only eq. 5's score clause
        makes positive.

        Args:
            anchors (list[Boxes]): #levels Boxes, (Hi * Wi * Ai, 4) each.
            gt_instances (list[Instances]): N Instances with `gt_boxes` and `gt_classes`.
            pred_logits (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, K).
            pred_anchor_deltas (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, 4) (unused).

        Returns:
            gt_labels (list[Tensor]): N tensors (R,) int64 in {-1, 0, ..., K}.
            gt_boxes (list[Tensor]): N tensors (R, 4), the box each anchor is assigned to.
            reg_masks (list[Tensor]): N tensors (R,) bool, the classification positives.
        """
        if not self.iac_enabled:
            return super().assign_anchors(anchors, gt_instances, pred_logits, pred_anchor_deltas)
        anchors = Boxes.cat(anchors).tensor  # (R, 4)
        scores = cat(pred_logits, dim=1).detach().sigmoid()  # (N, R, K)
        gt_labels, gt_boxes, reg_masks, num_promoted = [], [], [], 0
        for image_scores, gt in zip(scores, gt_instances):
            labels, matched, promoted = iac_assignment(
                anchors,
                gt.gt_boxes.tensor,
                gt.gt_classes,
                image_scores,
                num_classes=self.num_classes,
                alpha=self.iac_alpha,
                score_thresh=self.iac_score_thresh,
                iou_thresholds=self.iou_thresholds,
                promote=self.iac_promote,
            )
            gt_labels.append(labels)
            boxes = gt.gt_boxes.tensor
            gt_boxes.append(boxes[matched] if len(gt) > 0 else torch.zeros_like(anchors))
            reg_masks.append((labels >= 0) & (labels != self.num_classes))
            num_promoted += int(promoted.sum())
        get_event_storage().put_scalar("num_iac_promoted_anchors", num_promoted / len(scores))
        return gt_labels, gt_boxes, reg_masks

    def classification_loss(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: Tensor,
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Tensor:
        """Eq. 3's classification part: sum over the positives of lambda'_i L_cls,i plus the
        unweighted sum over the negatives (L_cls: the focal loss of the anchor summed over the
        K classes; ignored anchors excluded). lambda' (eq. 1-2) uses the detached decoded
        boxes and losses, and is normalised over all positives of the batch.

        Args:
            anchors (list[Boxes]): #levels Boxes, (Hi * Wi * Ai, 4) each.
            pred_logits (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, K).
            gt_labels (Tensor[N, R]): int64 labels in {-1, 0, ..., K}.
            pred_anchor_deltas (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, 4).
            gt_boxes (list[Tensor]): N tensors (R, 4), the matched ground-truth boxes.

        Returns:
            Tensor[]: the summed loss, not normalised (the base divides it).
        """
        if not self.dc_enabled:
            return super().classification_loss(
                anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
            )
        per_anchor = self.focal_loss_per_anchor(pred_logits, gt_labels)  # (N, R)
        positive = (gt_labels >= 0) & (gt_labels != self.num_classes)  # (N, R)
        with torch.no_grad():
            all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
            deltas = cat(pred_anchor_deltas, dim=1).detach()  # (N, R, 4)
            pred_boxes = self.box2box_transform.apply_deltas(
                deltas[positive], all_anchors.expand(len(gt_labels), -1, -1)[positive]
            )
            coefficient = dynamic_coefficient(
                pred_boxes, torch.stack(gt_boxes)[positive], self.dc_eps
            )
            weights = torch.ones_like(per_anchor)
            weights[positive] = normalize_coefficient(coefficient, per_anchor[positive])
        return (weights * per_anchor).sum()
