"""IoU between boxes: aligned (row-by-row) IoU, pairwise IoU, IoU targets of proposals.

Shape legend:
    N, M: numbers of boxes
    G: number of ground-truth boxes of one image

All boxes are XYXY in absolute pixels, `(x1, y1, x2, y2)` with `x1 < x2`, `y1 < y2` for a valid
box. Degenerate boxes (zero or negative width/height) have IoU 0 with everything, as in
detectron2's :func:`detectron2.structures.pairwise_iou`.
"""

from typing import Union

import torch
from detectron2.structures import Boxes
from detectron2.structures import pairwise_iou as _d2_pairwise_iou

__all__ = ["aligned_iou", "pairwise_iou", "proposal_iou_targets"]


def _check_box_tensor(boxes: torch.Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (XYXY), got {tuple(boxes.shape)}")


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of `boxes1[i]` with `boxes2[i]` for every row i.

    Same formula as detectron2's `pairwise_iou` (intersection / union, 0 where the
    intersection is empty), but row-aligned. Unlike detectron2's `matched_pairwise_iou` it is 0,
    not NaN, for pairs of degenerate boxes, and its gradient is finite everywhere (0 where the
    intersection is empty), so it can serve as a differentiable IoU.

    Args:
        boxes1 (Tensor[N, 4]): XYXY boxes.
        boxes2 (Tensor[N, 4]): XYXY boxes, same N, dtype and device as `boxes1`.

    Returns:
        Tensor[N]: IoU in [0, 1], dtype of the inputs.
    """
    _check_box_tensor(boxes1, "boxes1")
    _check_box_tensor(boxes2, "boxes2")
    if boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(
            f"aligned_iou needs the same number of boxes, got {boxes1.shape[0]} and "
            f"{boxes2.shape[0]}"
        )
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    width_height = (
        torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])
    ).clamp(min=0)
    inter = width_height[:, 0] * width_height[:, 1]
    nonempty = inter > 0
    # the union is > 0 wherever the intersection is; elsewhere divide by 1 to keep grads finite
    union = torch.where(nonempty, area1 + area2 - inter, torch.ones_like(inter))
    return torch.where(nonempty, inter / union, torch.zeros_like(inter))


def pairwise_iou(
    boxes1: Union[Boxes, torch.Tensor], boxes2: Union[Boxes, torch.Tensor]
) -> torch.Tensor:
    """IoU between all pairs of boxes; detectron2's `pairwise_iou` that also takes tensors.

    Tensors are wrapped in detectron2 `Boxes`, which hold float32, so the result is float32.

    Args:
        boxes1 (Boxes or Tensor[N, 4]): XYXY boxes.
        boxes2 (Boxes or Tensor[M, 4]): XYXY boxes.

    Returns:
        Tensor[N, M]: IoU in [0, 1].
    """
    if not isinstance(boxes1, Boxes):
        _check_box_tensor(boxes1, "boxes1")
        boxes1 = Boxes(boxes1)
    if not isinstance(boxes2, Boxes):
        _check_box_tensor(boxes2, "boxes2")
        boxes2 = Boxes(boxes2)
    return _d2_pairwise_iou(boxes1, boxes2)


def proposal_iou_targets(
    proposal_boxes: Boxes, gt_boxes: Boxes, matched_idxs: torch.Tensor
) -> torch.Tensor:
    """IoU of each proposal with the ground-truth box it was matched to.

    Args:
        proposal_boxes (Boxes): N XYXY proposals of one image.
        gt_boxes (Boxes): G XYXY ground-truth boxes of the same image.
        matched_idxs (Tensor[N], int64): index into `gt_boxes` of each proposal's GT; a
            negative index marks a background proposal. With G = 0 every proposal is background
            whatever the index (detectron2's `Matcher` returns zeros then).

    Returns:
        Tensor[N]: IoU with the matched GT; 0 for background proposals (callers mask them,
        e.g. with the matched labels).
    """
    num_props, num_gt = len(proposal_boxes), len(gt_boxes)
    if matched_idxs.shape != (num_props,):
        raise ValueError(
            f"matched_idxs must have shape [{num_props}], got {tuple(matched_idxs.shape)}"
        )
    props = proposal_boxes.tensor
    if num_gt == 0:
        return props.new_zeros(num_props)
    if num_props and int(matched_idxs.max()) >= num_gt:
        raise ValueError(
            f"matched_idxs holds index {int(matched_idxs.max())} but there are {num_gt} GT boxes"
        )
    foreground = matched_idxs >= 0
    matched_gt = gt_boxes.tensor[matched_idxs.clamp(min=0)]
    iou = aligned_iou(props, matched_gt)
    return torch.where(foreground, iou, torch.zeros_like(iou))
