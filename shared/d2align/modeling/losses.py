"""Losses shared by the projects: focal loss on detectron2-style anchor labels, balanced L1
loss (dense detectors), and the loss of a localization-quality (IoU) head.

Shapes: R anchors (or any number of samples, e.g. boxes scored by an IoU head), K foreground
classes.
Anchor labels follow detectron2's RetinaNet: (R,) int in {-1, 0, ..., K}, -1 = ignored,
K = background.
"""

import math

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit, smooth_l1_loss
from torch import Tensor

from .iou_targets import select_class_iou

__all__ = ["balanced_l1_loss", "focal_loss_on_labels", "iou_prediction_loss", "IOU_LOSS_TYPES"]

IOU_LOSS_TYPES = ("smooth_l1", "l1", "l2")


def focal_loss_on_labels(
    logits: Tensor,
    labels: Tensor,
    num_classes: int,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> Tensor:
    """Sigmoid focal loss (Lin et al., RetinaNet; fvcore's implementation) of anchor logits
    against anchor labels; ignored anchors (label -1) contribute nothing.

    Args:
        logits: (..., K) float, class logits of every anchor.
        labels: (...) int, same leading shape, values in {-1, 0, ..., K} (K = background).
        num_classes: K.
        alpha, gamma: focal loss parameters.
        reduction: "none" (one value per kept anchor and class), "mean" or "sum".

    Returns:
        The loss, reduced as asked (not normalised by the number of positives).
    """
    if logits.shape[:-1] != labels.shape or logits.shape[-1] != num_classes:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be labels' shape {tuple(labels.shape)} plus "
            f"({num_classes},) classes"
        )
    valid = labels >= 0
    # one-hot over K + 1 columns, then drop the background column: background = all zeros
    targets = F.one_hot(labels[valid].long(), num_classes=num_classes + 1)[:, :-1]
    return sigmoid_focal_loss_jit(
        logits[valid], targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction=reduction
    )


def balanced_l1_loss(
    input: Tensor,
    target: Tensor,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    reduction: str = "none",
) -> Tensor:
    """Balanced L1 loss of Libra R-CNN (Pang et al., CVPR 2019, Eq. 7-9), elementwise on
    x = input - target::

        L(x) = alpha / b * (b|x| + 1) * ln(b|x| / beta + 1) - alpha |x|   if |x| < beta
             = gamma |x| + gamma / b - alpha * beta                       otherwise,
        with b = e^(gamma / alpha) - 1, so that alpha * ln(b + 1) = gamma.

    L is continuous at |x| = beta; with beta = 1 (the paper's form) so is its gradient,
    alpha * ln(b|x| + 1) inside and gamma outside. The defaults alpha = 0.5, gamma = 1.5,
    beta = 1.0 are Libra R-CNN's; with unnormalised RetinaNet deltas (box weights 1, 1, 1, 1),
    Libra RetinaNet and Mutual Guidance's code use beta = 0.11.

    Args:
        input, target: float tensors of the same shape, e.g. (R, 4) box deltas.
        alpha: gradient scale for inliers (> 0); gamma: gradient bound of outliers (> 0);
        beta: inlier / outlier boundary (> 0).
        reduction: "none", "mean" or "sum".
    """
    if alpha <= 0 or gamma <= 0 or beta <= 0:
        raise ValueError(
            f"balanced_l1_loss needs alpha, gamma, beta > 0, got {alpha}, {gamma}, {beta}"
        )
    if input.shape != target.shape:
        raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} differ")
    diff = (input - target).abs()
    b = math.exp(gamma / alpha) - 1.0
    loss = torch.where(
        diff < beta,
        alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff,
        gamma * diff + gamma / b - alpha * beta,
    )
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"Unknown reduction '{reduction}'; expected 'none', 'mean' or 'sum'")


def iou_prediction_loss(
    pred: Tensor,
    classes: Tensor,
    targets: Tensor,
    loss_type: str = "smooth_l1",
    beta: float = 1.0,
) -> Tensor:
    """Loss of an IoU head's prediction for each box's class, averaged over the boxes.

    With d = prediction - target per box: "smooth_l1" is 0.5 d^2 / beta if |d| < beta, else
    |d| - 0.5 beta (fvcore's; beta = 0 gives L1), "l1" is |d|, "l2" is d^2. IoU-Net uses
    smooth-L1 on targets normalised to [-1, 1]; CPM R-CNN's IoU Scoring Module uses l2
    (its Table 5 compares the three).

    Args:
        pred (Tensor[R, K] or Tensor[R, 1]): IoU predicted for every class, or once per box
            (class-agnostic head), in the units of `targets`.
        classes (Tensor[R], int64): class of each box (its GT's), in [0, K).
        targets (Tensor[R]): IoU targets (e.g. normalised by `encode_iou`).
        loss_type (str): "smooth_l1", "l1" or "l2".
        beta (float): smooth-L1 transition point, >= 0 (ignored by "l1" and "l2").

    Returns:
        Tensor[]: the mean loss; 0 (connected to `pred`) when R = 0.
    """
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {IOU_LOSS_TYPES}, got {loss_type!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if targets.shape != classes.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} and classes {tuple(classes.shape)} must match"
        )
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    chosen = select_class_iou(pred, classes)
    if loss_type == "smooth_l1":
        loss = smooth_l1_loss(chosen, targets, beta, reduction="sum")
    elif loss_type == "l1":
        loss = (chosen - targets).abs().sum()
    else:
        loss = (chosen - targets).pow(2).sum()
    return loss / pred.shape[0]
