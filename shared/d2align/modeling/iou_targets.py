"""Training boxes and IoU targets of a localization-quality (IoU) head, as pure functions.

An IoU head predicts, from the pooled features of a box, its IoU with the ground truth it
covers. Its training boxes are either jittered ground-truth boxes (IoU-Net, §3.1:
:func:`sample_iou_training_boxes`, IoU >= Omega_train, uniform over the IoU) or the foreground
proposals of the ROI heads, possibly replaced by the boxes regressed from them (CPM R-CNN's IoU
Scoring Module scores the final stage's boxes: :func:`proposal_iou_training_boxes`). Both
return the same fields, so that one branch can train on either.

IoU targets may be normalised: :func:`encode_iou` maps [min_iou, 1] linearly onto [-1, 1]
(IoU-Net: "IoU labels are normalized s.t. the values are distributed over [-1, 1]"; with
min_iou = 0.5, t = 4 IoU - 3), :func:`decode_iou` maps predictions back (min_iou = 0 gives
t = 2 IoU - 1 over the whole IoU range).

Shape legend:
    N: training boxes of one image; R: over the batch
    K: foreground classes (predictions have K columns, or 1 for a class-agnostic head)

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Dict, List, Optional

import torch
from detectron2.structures import Boxes, Instances

from ..structures import aligned_iou, sample_jittered_boxes

__all__ = [
    "encode_iou",
    "decode_iou",
    "select_class_iou",
    "sample_iou_training_boxes",
    "proposal_iou_training_boxes",
]


def encode_iou(iou: torch.Tensor, min_iou: float) -> torch.Tensor:
    """IoU in [min_iou, 1] -> normalised target in [-1, 1] (linear). Tensor of any shape."""
    return 2.0 * (iou - min_iou) / (1.0 - min_iou) - 1.0


def decode_iou(target: torch.Tensor, min_iou: float) -> torch.Tensor:
    """Inverse of :func:`encode_iou`: network output -> predicted IoU (not clamped, so that
    its gradient w.r.t. the box never vanishes). Tensor of any shape."""
    return min_iou + 0.5 * (target + 1.0) * (1.0 - min_iou)


def select_class_iou(pred: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The prediction of each box for its class.

    Args:
        pred (Tensor[R, K] or Tensor[R, 1]): IoU predicted for every class (class-aware head)
            or once per box (class-agnostic head).
        classes (Tensor[R], int64): class of each box, in [0, K); unused when class-agnostic.

    Returns:
        Tensor[R]: `pred[i, classes[i]]`, or `pred[i, 0]` for a class-agnostic head.
    """
    if pred.dim() != 2 or pred.shape[0] != classes.shape[0]:
        raise ValueError(
            f"pred {tuple(pred.shape)} must be (R, K) or (R, 1) with R = {classes.shape[0]} boxes"
        )
    if pred.shape[1] == 1:
        return pred[:, 0]
    return pred.gather(1, classes[:, None]).squeeze(1)


def sample_iou_training_boxes(
    targets: List[Instances],
    num_samples: int,
    jitter: Dict,
    generator: Optional[torch.Generator] = None,
) -> List[Instances]:
    """Jittered GT boxes of every image of a batch, with their IoU targets (IoU-Net, §3.1).

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


def proposal_iou_training_boxes(
    proposals: List[Instances],
    num_classes: int,
    boxes: Optional[List[torch.Tensor]] = None,
) -> List[Instances]:
    """The foreground proposals of every image (or the boxes regressed from them), with the
    IoU of each with the GT box it was matched to.

    Args:
        proposals (list[Instances]): per image, the sampled proposals of the ROI heads
            (`label_and_sample_proposals`, or a cascade stage's matching): `proposal_boxes`
            (Boxes[P]), `gt_classes` (Tensor[P], int64, K = background) and, when any is
            foreground, `gt_boxes` (Boxes[P], the matched GT of each proposal).
        num_classes (int): K.
        boxes (list[Tensor] or None): per image, Tensor[P, 4] boxes to score instead of the
            proposals, e.g. their regressed boxes for the GT class
            (`predict_boxes_for_gt_classes`) or a cascade's final boxes; None scores the
            proposals themselves.

    Returns:
        list[Instances]: per image, for its N foreground proposals: `proposal_boxes`
        (Boxes[N], detached), `gt_classes` (Tensor[N]) and `gt_ious` (Tensor[N], IoU of each
        box with its matched GT, in [0, 1], no gradient).
    """
    if boxes is not None and len(boxes) != len(proposals):
        raise ValueError(f"{len(boxes)} box tensors for {len(proposals)} images")
    samples = []
    for i, props in enumerate(proposals):
        scored = props.proposal_boxes.tensor if boxes is None else boxes[i]
        if scored.shape != (len(props), 4):
            raise ValueError(
                f"image {i}: boxes {tuple(scored.shape)} must be ({len(props)}, 4), one XYXY box "
                "per proposal"
            )
        foreground = (props.gt_classes >= 0) & (props.gt_classes < num_classes)
        scored = scored[foreground].detach()
        if props.has("gt_boxes"):
            gt = props.gt_boxes.tensor[foreground]
        else:  # detectron2 sets no gt_boxes on an image without GT: all background
            gt = scored.new_zeros((0, 4))
        result = Instances(props.image_size)
        result.proposal_boxes = Boxes(scored)
        result.gt_classes = props.gt_classes[foreground]
        result.gt_ious = aligned_iou(scored, gt.to(scored.dtype))
        samples.append(result)
    return samples
