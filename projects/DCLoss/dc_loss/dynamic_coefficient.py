"""The Dynamic Coefficient of the DC loss (eq. 1) and its normalisation (eq. 2).

Pure tensor functions on the P positive anchors of a batch. Boxes are XYXY in absolute pixels;
"predicted" boxes are the decoded regression outputs (detached by the caller), "target" boxes
the ground truths the anchors are assigned to.

    lambda_i = 1 / (Sigmoid(d_i^2) + Tanh(|w_i / h_i - w^_i / h^_i|) + eps)          (eq. 1)

where d_i^2 is the squared distance between the predicted and the target centre, measured in
units of the target box's width and height (the paper leaves the unit open; see the project
README):

    d_i^2 = ((x_i - x^_i) / w^_i)^2 + ((y_i - y^_i) / h^_i)^2

A perfect box has d = 0 and equal aspect ratios, hence the largest coefficient
1 / (0.5 + eps); lambda falls with the centre error and with the aspect-ratio error and stays
above 1 / (2 + eps).

    lambda'_i = lambda_i * sum_j L_j / sum_j lambda_j L_j                             (eq. 2)

rescales the coefficients so that the weighted classification loss of the positives keeps its
unweighted sum: the DC loss only moves weight from badly to well localized positives.
"""

import torch
from torch import Tensor

__all__ = ["dynamic_coefficient", "normalize_coefficient"]


def _centers_and_sizes(boxes: Tensor):
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    return centers, widths, heights


def dynamic_coefficient(pred_boxes: Tensor, target_boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """lambda of eq. 1 for each positive anchor (see the module docstring).

    Args:
        pred_boxes (Tensor[P, 4]): decoded predicted boxes, XYXY (a zero height counts as the
            largest aspect error).
        target_boxes (Tensor[P, 4]): their target (ground-truth) boxes, XYXY, positive width
            and height.
        eps (float): epsilon of eq. 1, >= 0.

    Returns:
        Tensor[P]: lambda in [1 / (2 + eps), 1 / (0.5 + eps)], no gradient.
    """
    if pred_boxes.shape != target_boxes.shape or pred_boxes.shape[-1:] != (4,):
        raise ValueError(
            f"dynamic_coefficient: pred_boxes {tuple(pred_boxes.shape)} and target_boxes "
            f"{tuple(target_boxes.shape)} must both be (P, 4)"
        )
    if not eps >= 0:
        raise ValueError(f"dynamic_coefficient: eps must be >= 0, got {eps}")
    with torch.no_grad():
        pred_c, pred_w, pred_h = _centers_and_sizes(pred_boxes)
        gt_c, gt_w, gt_h = _centers_and_sizes(target_boxes)
        if not ((gt_w > 0).all() and (gt_h > 0).all()):
            raise ValueError("dynamic_coefficient: target boxes need positive width and height")
        center_error = (((pred_c - gt_c) / torch.stack([gt_w, gt_h], dim=1)) ** 2).sum(dim=1)
        # a collapsed prediction (height 0 after exp underflow) has an infinite aspect error:
        # Tanh gives 1, its largest penalty
        pred_h = pred_h.clamp(min=torch.finfo(pred_h.dtype).tiny)
        aspect_error = (pred_w.clamp(min=0) / pred_h - gt_w / gt_h).abs()
        return 1.0 / (torch.sigmoid(center_error) + torch.tanh(aspect_error) + eps)


def normalize_coefficient(coefficient: Tensor, cls_losses: Tensor) -> Tensor:
    """lambda' of eq. 2, so that sum_i lambda'_i L_i = sum_i L_i.

    Args:
        coefficient (Tensor[P]): lambda of eq. 1 (positive).
        cls_losses (Tensor[P]): classification loss L_i of each positive anchor (>= 0).

    Returns:
        Tensor[P]: lambda', no gradient (neither lambda nor the normaliser is back-propagated).
        When every L_i is 0 the ratio is undefined and lambda is returned unscaled (the weighted
        and the unweighted sum are both 0).
    """
    if coefficient.shape != cls_losses.shape or coefficient.dim() != 1:
        raise ValueError(
            f"normalize_coefficient: coefficient {tuple(coefficient.shape)} and cls_losses "
            f"{tuple(cls_losses.shape)} must both be (P,)"
        )
    with torch.no_grad():
        losses = cls_losses.detach()
        weighted = (coefficient * losses).sum()
        scale = torch.where(weighted > 0, losses.sum() / weighted, torch.ones_like(weighted))
        return coefficient * scale
