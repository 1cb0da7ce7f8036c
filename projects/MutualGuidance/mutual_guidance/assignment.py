"""Mutual Guidance label assignment (Zhang et al., ACCV 2020, Sec. 3) on one image.

Shapes and conventions:
    A: anchors of the image (all levels concatenated); G: ground truths (may be 0);
    K: foreground classes.
    Boxes are XYXY in absolute input-image pixels.
    cls_labels: (A,) int64 in {-1, 0, ..., K}: -1 ignored, K background (detectron2 RetinaNet).
    reg_matched_gt: (A,) int64 index of the ground truth an anchor regresses to (0 when G = 0);
    reg_mask: (A,) bool, the anchors trained for regression.

The four rules (MODEL.MUTUAL_GUIDANCE.ASSIGNMENT):
    static: IoU_anchor (`d2align.modeling.anchor_assignment.static_iou_assignment`) for both
        tasks: positive >= 0.5, ignored in [0.4, 0.5), negative < 0.4, plus each ground truth's
        best anchor.
    localize_to_classify (Sec. 3.1): the static rule gives, per ground truth g, N_p[g] positive
        and N_i[g] ignored anchors matched to g. For classification, the N_p[g] anchors with the
        highest IoU_regressed (IoU of the anchor's detached regressed box with g) are positive,
        the next N_i[g] ignored, the rest negative. Regression stays static.
    classify_to_localize (Sec. 3.2): for regression, the N_p[g] anchors with the highest
        IoU_amplified = IoU_anchor ** ((sigma - p) / sigma), p = the anchor's detached
        predicted probability of g's class, are positive. Classification stays static.
    mutual_guidance: both of the above.

An anchor wanted by several ground truths belongs to one of them, chosen with the same quality
(IoU_anchor, IoU_regressed or IoU_amplified) that ranks it: see the ownership rule of
`d2align.modeling.anchor_assignment`.
"""

from typing import Optional, Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

from d2align.modeling.anchor_assignment import (
    all_background_labels,
    count_per_gt,
    static_iou_assignment,
    topk_per_gt_assignment,
)

from .config import ASSIGNMENTS

__all__ = ["iou_amplified", "assign_anchors", "needs_predictions"]


def needs_predictions(assignment: str) -> Tuple[bool, bool]:
    """(uses the regressed boxes, uses the class scores) of an assignment rule."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"Unknown assignment {assignment!r}; expected one of {ASSIGNMENTS}")
    return (
        assignment in ("localize_to_classify", "mutual_guidance"),
        assignment in ("classify_to_localize", "mutual_guidance"),
    )


def iou_amplified(iou_anchor: Tensor, scores: Tensor, sigma: float) -> Tensor:
    """Eq. (1): IoU_amplified = IoU_anchor ** ((sigma - p) / sigma).

    For p in [0, 1] and sigma > 1 the exponent is in (0, 1], so IoU_amplified >= IoU_anchor,
    with equality at p = 0 (and at IoU_anchor in {0, 1}).

    Args:
        iou_anchor: (G, A) IoU of anchors with ground truths, in [0, 1].
        scores: (G, A) predicted probability p of each ground truth's class at each anchor.
        sigma: > 1.
    """
    if not sigma > 1.0:
        raise ValueError(f"sigma must be > 1 (MODEL.MUTUAL_GUIDANCE.SIGMA), got {sigma}")
    return iou_anchor.clamp(min=0.0).pow((sigma - scores) / sigma)


def assign_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pred_boxes: Optional[Tensor],
    pred_scores: Optional[Tensor],
    *,
    num_classes: int,
    assignment: str = "mutual_guidance",
    sigma: float = 2.0,
    iou_thresholds: Tuple[float, float] = (0.4, 0.5),
) -> Tuple[Tensor, Tensor, Tensor]:
    """Classification labels and regression anchors of one image (see the module docstring).

    Args:
        anchors: (A, 4) anchor boxes.
        gt_boxes: (G, 4) ground-truth boxes; gt_classes: (G,) int64 in [0, K).
        pred_boxes: (A, 4) regressed boxes (detached), needed by localize_to_classify and
            mutual_guidance; else may be None.
        pred_scores: (A, K) predicted class probabilities (detached, after sigmoid), needed by
            classify_to_localize and mutual_guidance; else may be None.
        num_classes: K.
        assignment: one of `ASSIGNMENTS`.
        sigma: sigma of Eq. (1).
        iou_thresholds: (negative, positive) thresholds of the static rule.

    Returns:
        cls_labels (A,) int64, reg_matched_gt (A,) int64, reg_mask (A,) bool.
    """
    use_boxes, use_scores = needs_predictions(assignment)
    if (use_boxes and pred_boxes is None) or (use_scores and pred_scores is None):
        raise ValueError(f"assignment {assignment!r} needs pred_boxes / pred_scores")
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        return all_background_labels(num_anchors, num_classes, anchors.device)
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(anchors))  # (G, A)
    matched, labels = static_iou_assignment(iou, *iou_thresholds)
    cls_matched, cls_labels = reg_matched, reg_labels = matched, labels
    num_pos, num_ignored = count_per_gt(matched, labels, num_gt)
    if use_boxes:  # Localize to Classify
        iou_regressed = pairwise_iou(Boxes(gt_boxes), Boxes(pred_boxes))
        cls_matched, cls_labels = topk_per_gt_assignment(iou_regressed, num_pos, num_ignored)
    if use_scores:  # Classify to Localize
        scores = pred_scores[:, gt_classes].t()  # (G, A)
        amplified = iou_amplified(iou, scores, sigma)
        reg_matched, reg_labels = topk_per_gt_assignment(amplified, num_pos)
    background = torch.full_like(cls_matched, num_classes)
    class_labels = torch.where(cls_labels == 1, gt_classes[cls_matched], background)
    class_labels[cls_labels == -1] = -1
    return class_labels, reg_matched, reg_labels == 1
