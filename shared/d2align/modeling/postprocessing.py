"""Per-class NMS of a selectable type, for any detector's candidate boxes.

`per_class_nms` runs one of the NMS variants of `d2align.ops` on the candidates of one image,
so that a detector's post-processing can switch among them by a config key (the RetinaNet base
`D2AlignRetinaNet` does, with `MODEL.D2ALIGN_RETINANET.NMS_TYPE`):

    "standard": detectron2's `batched_nms` (torchvision's NMS per class);
    "soft_linear" / "soft_gaussian": Soft-NMS (Bodla et al., ICCV 2017), `batched_soft_nms`;
    "cl_balanced": Classification-Localization-balanced NMS (DC Loss paper, eq. 6-7),
        `batched_cl_balanced_nms`;
    "iou_guided": IoU-guided NMS (IoU-Net, Algorithm 1), `batched_iou_guided_nms`, for heads
        that predict each box's IoU (`loc_scores`).

It is the one NMS dispatcher of d2align: the two-stage heads (`nms_detections`), the RetinaNet
base and IoU-Net's post-processor all call it, with settings read by `nms_settings_from_config`
from a node holding the keys of `d2align.config.add_nms_keys`.

Every type returns its detections ranked by the score it reports, so that a detector's cap on
detections per image (`TEST.DETECTIONS_PER_IMAGE`) keeps the most confident ones.

Shape legend:
    M: candidates of one image; D: kept detections

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from detectron2.layers import batched_nms

from ..config import check_choice, check_config
from ..ops import batched_cl_balanced_nms, batched_iou_guided_nms, batched_soft_nms

__all__ = [
    "NMS_TYPES",
    "SCORE_NMS_TYPES",
    "CL_NMS_CENTER_WEIGHTS",
    "nms_settings_from_config",
    "per_class_nms",
]

NMS_TYPES = ("standard", "soft_linear", "soft_gaussian", "cl_balanced", "iou_guided")
# the types that need only classification scores: every detector can use them
SCORE_NMS_TYPES = NMS_TYPES[:4]
CL_NMS_CENTER_WEIGHTS = ("logit", "probability")  # f of eq. 6 (`batched_cl_balanced_nms`)


def per_class_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    nms_type: str = "standard",
    iou_threshold: float = 0.5,
    *,
    soft_nms_sigma: float = 0.5,
    soft_nms_score_thresh: float = 0.001,
    cl_nms_temperature: float = 1.0,
    cl_nms_dis_scale: float = 1.0,
    cl_nms_center_weights: str = "logit",
    loc_scores: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """NMS of type `nms_type`, each class independently.

    Args:
        boxes (Tensor[M, 4]): candidate boxes.
        scores (Tensor[M]): their classification scores, the dtype of `boxes`.
        classes (Tensor[M], int64): their classes.
        nms_type (str): one of `NMS_TYPES`.
        iou_threshold (float): the IoU above which boxes overlap: the NMS threshold (standard),
            N_t (linear Soft-NMS; Gaussian Soft-NMS does not use it), the cluster threshold
            (CL-balanced).
        soft_nms_sigma (float): sigma of Gaussian Soft-NMS, > 0.
        soft_nms_score_thresh (float): Soft-NMS drops boxes whose decayed score falls below it.
        cl_nms_temperature (float): temperature of the softmax of eq. 6 (CL-balanced), > 0.
        cl_nms_dis_scale (float): weight of the centre term of eq. 7 (CL-balanced), >= 0.
        cl_nms_center_weights (str): f of eq. 6 (CL-balanced): "logit" or "probability".
        loc_scores (Tensor[M] or None): predicted IoU of each box; required by "iou_guided"
            (the ranking key), unused by the others.

    Returns:
        keep (Tensor[D], int64): kept candidates, best first by the score returned: by score
            (standard), by decayed score (Soft-NMS), by the classification score p
            (CL-balanced: p + dis chooses each cluster's box, then the kept boxes are ranked by
            p, the score they are reported with, ties in p + dis order; a cap on the number of
            detections then drops the least confident, not the lone boxes that p + dis
            favours: a box alone in its cluster has dis = 1), by the updated classification
            score (IoU-guided: each kept box takes the highest score of its cluster).
        scores (Tensor[D]): their scores as detections: `scores[keep]` (standard,
            CL-balanced: the classification score, the selection score p + dis only ranks),
            the decayed scores (Soft-NMS), the cluster's highest score (IoU-guided).
    """
    if nms_type == "standard":
        keep = batched_nms(boxes, scores, classes, iou_threshold)
        return keep, scores[keep]
    if nms_type in ("soft_linear", "soft_gaussian"):
        return batched_soft_nms(
            boxes,
            scores,
            classes,
            method=nms_type[len("soft_") :],
            iou_threshold=iou_threshold,
            sigma=soft_nms_sigma,
            score_threshold=soft_nms_score_thresh,
        )
    if nms_type == "cl_balanced":
        keep, _ = batched_cl_balanced_nms(
            boxes,
            scores,
            classes,
            iou_threshold=iou_threshold,
            temperature=cl_nms_temperature,
            dis_scale=cl_nms_dis_scale,
            center_weights=cl_nms_center_weights,
        )
        keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
        return keep, scores[keep]
    if nms_type == "iou_guided":
        if loc_scores is None:
            raise ValueError("per_class_nms: nms_type 'iou_guided' needs loc_scores")
        keep, new_scores = batched_iou_guided_nms(boxes, scores, loc_scores, classes, iou_threshold)
        order = torch.sort(new_scores, descending=True, stable=True).indices
        return keep[order], new_scores[order]
    raise ValueError(f"per_class_nms: nms_type must be one of {NMS_TYPES}, got {nms_type!r}")


def nms_settings_from_config(
    node, prefix: str, allowed: Sequence[str] = NMS_TYPES
) -> Tuple[str, Dict[str, Any]]:
    """The NMS type and the keyword arguments of `per_class_nms` from a config node holding
    NMS_TYPE, SOFT_NMS_SIGMA, SOFT_NMS_SCORE_THRESH, CL_NMS_TEMPERATURE, CL_NMS_DIS_SCALE and
    CL_NMS_CENTER_WEIGHTS (e.g. `cfg.MODEL.D2ALIGN_ROI_HEADS`), checked.

    Args:
        node (CfgNode): the node.
        prefix (str): its full name with a trailing dot, for the error messages.
        allowed (sequence of str): the NMS types the caller supports (a head without an IoU
            prediction has no "iou_guided").

    Returns:
        (nms_type, kwargs): kwargs has soft_nms_sigma, soft_nms_score_thresh,
        cl_nms_temperature, cl_nms_dis_scale and cl_nms_center_weights.

    Raises:
        ValueError: a value is out of range (the message names the key).
    """
    check_choice(prefix + "NMS_TYPE", node.NMS_TYPE, allowed)
    check_config(
        node.SOFT_NMS_SIGMA > 0, prefix + "SOFT_NMS_SIGMA", node.SOFT_NMS_SIGMA, "must be > 0"
    )
    check_config(
        0 <= node.SOFT_NMS_SCORE_THRESH <= 1,
        prefix + "SOFT_NMS_SCORE_THRESH",
        node.SOFT_NMS_SCORE_THRESH,
        "must be in [0, 1]",
    )
    check_config(
        node.CL_NMS_TEMPERATURE > 0,
        prefix + "CL_NMS_TEMPERATURE",
        node.CL_NMS_TEMPERATURE,
        "must be > 0",
    )
    check_config(
        node.CL_NMS_DIS_SCALE >= 0,
        prefix + "CL_NMS_DIS_SCALE",
        node.CL_NMS_DIS_SCALE,
        "must be >= 0",
    )
    check_choice(
        prefix + "CL_NMS_CENTER_WEIGHTS", node.CL_NMS_CENTER_WEIGHTS, CL_NMS_CENTER_WEIGHTS
    )
    return node.NMS_TYPE, dict(
        soft_nms_sigma=node.SOFT_NMS_SIGMA,
        soft_nms_score_thresh=node.SOFT_NMS_SCORE_THRESH,
        cl_nms_temperature=node.CL_NMS_TEMPERATURE,
        cl_nms_dis_scale=node.CL_NMS_DIS_SCALE,
        cl_nms_center_weights=node.CL_NMS_CENTER_WEIGHTS,
    )
