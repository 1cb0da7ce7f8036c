"""Losses of dense detectors: focal loss on detectron2-style anchor labels, balanced L1 loss.

Shapes: R anchors (or any number of samples), K foreground classes.
Anchor labels follow detectron2's RetinaNet: (R,) int in {-1, 0, ..., K}, -1 = ignored,
K = background.
"""
import math

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor

__all__ = ["balanced_l1_loss", "focal_loss_on_labels"]


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
