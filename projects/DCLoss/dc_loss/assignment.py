"""IoU-classification-aware (IAC) anchor assignment (DC Loss paper, eq. 4-5) on one image.

Shapes and conventions:
    A: anchors of the image (all levels concatenated); G: ground truths (may be 0);
    K: foreground classes.
    Boxes are XYXY in absolute input-image pixels.
    cls_labels: (A,) int64 in {-1, 0, ..., K}: -1 ignored, K background (detectron2 RetinaNet).
    matched_gt: (A,) int64 index of the ground truth an anchor is assigned to (0 when G = 0).

For a ground truth g and an anchor a (eq. 4):

    s[g, a] = alpha * p^[g, a] + (1 - alpha) * area(g ∩ a) / min(area(g), area(a))

with p^[g, a] the anchor's predicted probability (sigmoid, detached) of g's class, and
s[g, a] = 0 where g and a do not intersect (a prediction alone never makes an anchor far from
the object positive). Labels (eq. 5), with [bg, fg] = MODEL.RETINANET.IOU_THRESHOLDS:

    positive  if the static RetinaNet rule makes a positive (IoU >= fg, or the ground truth's
              best anchor: detectron2's low-quality matches), matched to its IoU owner;
              or if the anchor is eligible (below) and s[g, a] >= score_threshold for the
              s-owner g of a, matched to g;
    negative  otherwise, if the anchor's highest IoU is < bg (detectron2's convention; the
              paper's <= differs only at exact equality);
    ignored   otherwise.

Eq. 5 lists "IoU <= bg: negative" and "s >= score_threshold: positive" as two cases without
saying which wins when both hold. `promote` chooses:

    "ignored" (default)  only the anchors the IoU rule leaves ignored (bg <= IoU < fg) can be
                         promoted; IoU < bg stays negative.
    "any"                every anchor that is not a static positive can be promoted, negatives
                         included (the score clause first).

"Owner" is the shared ownership rule of `d2align.modeling.anchor_assignment` applied to the IoU
(static positives) and to s (the positives added by eq. 5's second clause). Limits:
alpha = 0 makes the rule prediction-free (static rule plus the eligible anchors whose
intersection over the smaller area reaches the threshold); alpha = 1 adds the eligible anchors
overlapping a ground truth whose predicted probability of its class reaches the threshold. A
threshold above every s (e.g. p^ at the focal-loss prior 0.01 with alpha = 0.5 and a threshold
above 0.505) leaves the static rule unchanged.
"""

from typing import Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou
from detectron2.structures.boxes import pairwise_intersection
from torch import Tensor

from d2align.modeling.anchor_assignment import (
    all_background_labels,
    anchor_owners,
    static_iou_assignment,
)

__all__ = ["PROMOTE_CHOICES", "iac_scores", "iac_assignment"]

# which anchors eq. 5's score clause may make positive (module docstring)
PROMOTE_CHOICES = ("ignored", "any")


def iac_scores(anchors: Tensor, gt_boxes: Tensor, gt_scores: Tensor, alpha: float) -> Tensor:
    """s of eq. 4 for every (ground truth, anchor) pair; 0 where they do not intersect.

    Args:
        anchors (Tensor[A, 4]): anchor boxes.
        gt_boxes (Tensor[G, 4]): ground-truth boxes.
        gt_scores (Tensor[G, A]): p^, the predicted probability of each ground truth's class
            at each anchor, in [0, 1].
        alpha (float): alpha of eq. 4, in [0, 1].

    Returns:
        Tensor[G, A]: s, in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (MODEL.DC_LOSS.IAC.ALPHA), got {alpha}")
    gt, anc = Boxes(gt_boxes), Boxes(anchors)
    if gt_scores.shape != (len(gt), len(anc)):
        raise ValueError(
            f"gt_scores {tuple(gt_scores.shape)} must be (G, A) = ({len(gt)}, {len(anc)})"
        )
    intersection = pairwise_intersection(gt, anc)  # (G, A)
    smaller = torch.minimum(gt.area()[:, None], anc.area()[None, :])
    overlap = intersection / smaller.clamp(min=torch.finfo(smaller.dtype).tiny)
    s = alpha * gt_scores + (1.0 - alpha) * overlap
    return torch.where(intersection > 0, s, torch.zeros_like(s))


def iac_assignment(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pred_scores: Tensor,
    *,
    num_classes: int,
    alpha: float = 0.5,
    score_thresh: float = 0.6,
    iou_thresholds: Tuple[float, float] = (0.4, 0.5),
    promote: str = "ignored",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Classification labels and matched ground truths of one image (module docstring).

    Args:
        anchors (Tensor[A, 4]): anchor boxes.
        gt_boxes (Tensor[G, 4]): ground-truth boxes; gt_classes (Tensor[G], int64) in [0, K).
        pred_scores (Tensor[A, K]): predicted class probabilities (after sigmoid, detached).
        num_classes (int): K.
        alpha (float): alpha of eq. 4, in [0, 1].
        score_thresh (float): score_threshold of eq. 5, in (0, 1].
        iou_thresholds (tuple[float, float]): (bg_threshold, fg_threshold) of eq. 5.
        promote (str): which anchors the score clause may promote, one of PROMOTE_CHOICES:
            "ignored" (bg <= IoU < fg) or "any" (every non-positive; module docstring).

    Returns:
        cls_labels (Tensor[A], int64), matched_gt (Tensor[A], int64) and promoted (Tensor[A],
        bool): the positives that only eq. 5's score clause makes positive. The anchors
        trained for regression are the positives (cls_labels in [0, K)).
    """
    if not 0.0 < score_thresh <= 1.0:
        raise ValueError(
            f"score_thresh must be in (0, 1] (MODEL.DC_LOSS.IAC.SCORE_THRESH), got {score_thresh}"
        )
    if promote not in PROMOTE_CHOICES:
        raise ValueError(
            f"promote must be one of {PROMOTE_CHOICES} (MODEL.DC_LOSS.IAC.PROMOTE), got {promote!r}"
        )
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if pred_scores.shape != (num_anchors, num_classes):
        raise ValueError(
            f"pred_scores {tuple(pred_scores.shape)} must be (A, K) = ({num_anchors}, "
            f"{num_classes})"
        )
    if num_gt == 0:
        return all_background_labels(num_anchors, num_classes, anchors.device)
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(anchors))  # (G, A)
    matched, labels = static_iou_assignment(iou, *iou_thresholds)
    s = iac_scores(anchors, gt_boxes, pred_scores[:, gt_classes].t(), alpha)
    s_owner, _ = anchor_owners(s)
    s_of_owner = s.gather(0, s_owner[None, :])[0]  # (A,)
    eligible = labels == -1 if promote == "ignored" else labels != 1
    promoted = eligible & (s_of_owner >= score_thresh)
    matched = torch.where(promoted, s_owner, matched)
    labels = torch.where(promoted, torch.ones_like(labels), labels)
    cls_labels = torch.where(
        labels == 1, gt_classes[matched], torch.full_like(matched, num_classes)
    )
    cls_labels[labels == -1] = -1
    return cls_labels, matched, promoted
