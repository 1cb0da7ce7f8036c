"""`MutualGuidanceRetinaNet`: RetinaNet whose training label assignment is configurable.

Only training differs from detectron2's `RetinaNet`: `forward_training` assigns anchors with
`assign_anchors` (which may look at the detached predictions) and `losses` trains the
classification on the assigned labels with the focal loss and the regression on the assigned
anchors with the balanced L1 loss. Inference (`forward_inference`) is RetinaNet's, unchanged.

Shapes: N images, R anchors per image (all levels), K classes, Hi x Wi x Ai anchors per level.
"""
from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor

from d2align.modeling.losses import balanced_l1_loss, focal_loss_on_labels

from .assignment import assign_anchors, needs_predictions
from .config import check_mutual_guidance_config

__all__ = ["MutualGuidanceRetinaNet"]


@META_ARCH_REGISTRY.register()
class MutualGuidanceRetinaNet(RetinaNet):
    """RetinaNet trained with the static, Localize-to-Classify, Classify-to-Localize or Mutual
    Guidance label assignment, focal loss and balanced L1 loss (Mutual Guidance, Sec. 3, 4.1).
    """

    @configurable
    def __init__(
        self,
        *,
        assignment: str = "mutual_guidance",
        sigma: float = 2.0,
        iou_thresholds: Tuple[float, float] = (0.4, 0.5),
        balanced_l1_alpha: float = 0.5,
        balanced_l1_gamma: float = 1.5,
        balanced_l1_beta: float = 0.11,
        cls_loss_weight: float = 1.0,
        box_reg_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            assignment: "static", "localize_to_classify", "classify_to_localize" or
                "mutual_guidance" (see `mutual_guidance.assignment`).
            sigma: sigma of Eq. (1), > 1.
            iou_thresholds: (negative, positive) IoU_anchor thresholds of the static rule.
            balanced_l1_alpha, balanced_l1_gamma, balanced_l1_beta: balanced L1 parameters.
            cls_loss_weight, box_reg_loss_weight: weights of the two losses.
            kwargs: detectron2 `RetinaNet` arguments.
        """
        super().__init__(**kwargs)
        self.use_pred_boxes, self.use_pred_scores = needs_predictions(assignment)
        self.assignment = assignment
        self.sigma = sigma
        self.iou_thresholds = tuple(iou_thresholds)
        self.balanced_l1 = dict(
            alpha=balanced_l1_alpha, gamma=balanced_l1_gamma, beta=balanced_l1_beta
        )
        self.cls_loss_weight = cls_loss_weight
        self.box_reg_loss_weight = box_reg_loss_weight

    @classmethod
    def from_config(cls, cfg):
        check_mutual_guidance_config(cfg)
        ret = super().from_config(cfg)
        mg = cfg.MODEL.MUTUAL_GUIDANCE
        ret.update(
            assignment=mg.ASSIGNMENT,
            sigma=mg.SIGMA,
            iou_thresholds=tuple(cfg.MODEL.RETINANET.IOU_THRESHOLDS),
            balanced_l1_alpha=mg.BALANCED_L1.ALPHA,
            balanced_l1_gamma=mg.BALANCED_L1.GAMMA,
            balanced_l1_beta=mg.BALANCED_L1.BETA,
            cls_loss_weight=mg.CLS_LOSS_WEIGHT,
            box_reg_loss_weight=mg.BOX_REG_LOSS_WEIGHT,
        )
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes, reg_masks = self.assign_anchors(
            anchors, gt_instances, pred_logits, pred_anchor_deltas
        )
        return self.losses(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, reg_masks
        )

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

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, reg_masks):
        """Focal loss on the classification labels, balanced L1 on the regression anchors.

        Args:
            anchors: #levels Boxes.
            pred_logits, pred_anchor_deltas: #levels tensors, (N, Hi * Wi * Ai, K or 4).
            gt_labels, gt_boxes, reg_masks: see `assign_anchors`.

        Returns:
            {"loss_cls", "loss_box_reg"}: both divided by the moving average of the number of
            classification-positive anchors per batch, as in detectron2's RetinaNet.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        reg_mask = torch.stack(reg_masks)  # (N, R)
        num_cls_pos = ((gt_labels >= 0) & (gt_labels != self.num_classes)).sum().item()
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_cls_pos / num_images)
        storage.put_scalar("num_reg_anchors", reg_mask.sum().item() / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_cls_pos, 1), 100)

        loss_cls = focal_loss_on_labels(
            cat(pred_logits, dim=1),
            gt_labels,
            self.num_classes,
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        anchors = Boxes.cat(anchors).tensor
        target_deltas = self.box2box_transform.get_deltas(
            anchors.expand(num_images, -1, -1)[reg_mask], torch.stack(gt_boxes)[reg_mask]
        )
        loss_box_reg = balanced_l1_loss(
            cat(pred_anchor_deltas, dim=1)[reg_mask],
            target_deltas,
            reduction="sum",
            **self.balanced_l1,
        )
        return {
            "loss_cls": self.cls_loss_weight * loss_cls / normalizer,
            "loss_box_reg": self.box_reg_loss_weight * loss_box_reg / normalizer,
        }
