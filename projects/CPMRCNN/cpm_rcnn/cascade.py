"""The Cascade Mapping Module's stage selection and loss weights (§3.2, eq. 1-2) and the fused
score (§3.3, eq. 4), as pure tensor functions.

Shape legend:
    B: boxes of one image; G_t: its ground-truth boxes; P: boxes kept for a stage
    D: detections

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import List, Optional, Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["stage_loss_weights", "select_stage_boxes", "fused_score"]


def stage_loss_weights(num_stages: int) -> List[float]:
    """beta_j of eq. 2: beta_1 = 1, halved at each following stage (§3.4).

    Returns:
        list[float]: [1, 0.5, 0.25, ...], `num_stages` values.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    return [0.5**j for j in range(num_stages)]


def select_stage_boxes(
    boxes: torch.Tensor, gt_boxes: torch.Tensor, threshold: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S_j of eq. 1 in training: the boxes whose best IoU with a ground-truth box reaches the
    stage's threshold, each matched to that ground truth.

    Args:
        boxes (Tensor[B, 4]): candidate boxes of one image (the sampled proposals for stage 1,
            the previous stage's decoded boxes after).
        gt_boxes (Tensor[G_t, 4]): the image's ground truth (may be empty).
        threshold (float): the stage's IoU threshold.

    Returns:
        kept (Tensor[P], int64): indices into `boxes` with IoU >= threshold.
        matched (Tensor[P], int64): index of each kept box's ground truth (its best IoU;
            ties go to the first).
        ious (Tensor[P]): that IoU.
    """
    if len(gt_boxes) == 0 or len(boxes) == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
        return empty, empty.clone(), boxes.new_zeros(0)
    iou = pairwise_iou(Boxes(boxes), Boxes(gt_boxes))  # (B, G_t)
    best_iou, matched = iou.max(dim=1)
    kept = (best_iou >= threshold).nonzero().squeeze(1)
    return kept, matched[kept], best_iou[kept]


def fused_score(
    cls_score: torch.Tensor,
    ism_score: Optional[torch.Tensor],
    rsm_score: Optional[torch.Tensor],
    gamma: float,
) -> torch.Tensor:
    """Eq. 4: (score_cls x score_ISM)^gamma x score_RSM^(1 - gamma).

    Without the RSM (Table 1's rows without it) the score is score_cls x score_ISM; without
    the ISM, score_cls^gamma x score_RSM^(1 - gamma); without both, score_cls. Scores are
    clamped to [0, 1] first (an IoU regressor may overshoot).

    Args:
        cls_score (Tensor[D]): classification confidence of each detection's class.
        ism_score (Tensor[D] or None): predicted IoU of each detection's box.
        rsm_score (Tensor[D] or None): RSM probability of each detection's class.
        gamma (float): in [0, 1].

    Returns:
        Tensor[D]: the fused score, in [0, 1].
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    score = cls_score.clamp(0, 1)
    if ism_score is not None:
        score = score * ism_score.clamp(0, 1)
    if rsm_score is not None:
        score = score.pow(gamma) * rsm_score.clamp(0, 1).pow(1 - gamma)
    return score
