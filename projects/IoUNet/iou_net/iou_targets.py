"""IoU-Net training targets and loss (§3.1, §3.4), as pure functions.

The IoU predictor is trained on jittered ground-truth boxes (IoU >= Omega_train with their GT,
uniform over the IoU), generated per image of the batch by
:func:`d2align.structures.sample_jittered_boxes`. Its IoU targets are normalised to [-1, 1]:
the IoU range of the samples, [Omega_train, 1], is mapped linearly onto [-1, 1] (with
Omega_train = 0.5: t = 4 IoU - 3), and the loss is smooth-L1 on the prediction of the box's GT
class (class-aware predictor).

Shape legend:
    N: jittered boxes of one image; R: over the batch
    K: foreground classes

Boxes are XYXY in absolute pixels of the network input.
"""
from typing import Dict, List, Optional

import torch
from detectron2.structures import Boxes, Instances
from fvcore.nn import smooth_l1_loss

from d2align.structures import sample_jittered_boxes

__all__ = ["encode_iou", "decode_iou", "iou_prediction_loss", "sample_iou_training_boxes"]


def encode_iou(iou: torch.Tensor, min_iou: float) -> torch.Tensor:
    """IoU in [min_iou, 1] -> normalised target in [-1, 1] (linear). Tensor of any shape."""
    return 2.0 * (iou - min_iou) / (1.0 - min_iou) - 1.0


def decode_iou(target: torch.Tensor, min_iou: float) -> torch.Tensor:
    """Inverse of :func:`encode_iou`: network output -> predicted IoU (not clamped, so that
    its gradient w.r.t. the box never vanishes). Tensor of any shape."""
    return min_iou + 0.5 * (target + 1.0) * (1.0 - min_iou)


def iou_prediction_loss(
    pred: torch.Tensor, classes: torch.Tensor, targets: torch.Tensor, beta: float
) -> torch.Tensor:
    """Smooth-L1 loss of the class-aware IoU predictor, averaged over the boxes.

    Args:
        pred (Tensor[R, K]): normalised IoU predicted for every class.
        classes (Tensor[R], int64): class of each box (its GT's), in [0, K).
        targets (Tensor[R]): normalised IoU targets (:func:`encode_iou`).
        beta (float): smooth-L1 transition point; 0 gives the L1 loss.

    Returns:
        Tensor[]: the mean loss; 0 (connected to `pred`) when R = 0.
    """
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    chosen = pred.gather(1, classes[:, None]).squeeze(1)
    return smooth_l1_loss(chosen, targets, beta, reduction="sum") / pred.shape[0]


def sample_iou_training_boxes(
    targets: List[Instances],
    num_samples: int,
    jitter: Dict,
    generator: Optional[torch.Generator] = None,
) -> List[Instances]:
    """Jittered GT boxes of every image of a batch, with their IoU targets (§3.1).

    Args:
        targets (list[Instances]): per image, `gt_boxes` (Boxes, XYXY) and `gt_classes`
            (Tensor[G], int64); `image_size` is used to clip the jittered boxes.
        num_samples (int): boxes per image with at least one GT (fewer only if an IoU bin of
            the jitter cannot be filled); images without GT get none.
        jitter (dict): keyword arguments of `sample_jittered_boxes` (min_iou, num_bins,
            scale_range, shift_range, aspect_range).
        generator (torch.Generator or None): source of randomness (default: the global RNG).

    Returns:
        list[Instances]: per image, `proposal_boxes` (Boxes[N]), `gt_index` (Tensor[N], the
        GT box of `target` each one was made from), `gt_classes` (Tensor[N]) and `gt_ious`
        (Tensor[N], the IoU of each box with its GT, in [min_iou, 1]).
    """
    samples = []
    for target in targets:
        gt = target.gt_boxes.tensor
        keep = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])  # degenerate GT cannot be jittered
        boxes, gt_index, iou = sample_jittered_boxes(
            gt[keep],
            num_samples if bool(keep.any()) else 0,
            image_size=target.image_size,
            generator=generator,
            **jitter,
        )
        result = Instances(target.image_size)
        result.proposal_boxes = Boxes(boxes)
        result.gt_index = keep.nonzero().squeeze(1)[gt_index]
        result.gt_classes = target.gt_classes[result.gt_index]
        result.gt_ious = iou
        samples.append(result)
    return samples
