"""`D2AlignStandardROIHeads`: detectron2's StandardROIHeads with the shared box pooler (which
may be PrRoIPool) and a box predictor from `BOX_PREDICTOR_REGISTRY`.

detectron2's `ROIPooler` accepts a fixed list of pooler types, and its ROI heads hard-wire
`FastRCNNOutputLayers`. The ROI heads of the d2align projects (IoU-Net, Offset Bin, CPM R-CNN)
build their box pooler with :func:`d2align.modeling.build_roi_box_pooler`, so that
`POOLER_TYPE: "PrRoIPool"` selects Precise RoI Pooling (differentiable w.r.t. the box
coordinates) and any other type detectron2's own pooler, and their box predictor with
:func:`d2align.modeling.build_box_predictor` (`MODEL.ROI_BOX_HEAD.PREDICTOR`). Subclass this
class (and extend `from_config` / `_init_box_head`) rather than `StandardROIHeads`; extra RoI
branches build their poolers with :func:`d2align.modeling.build_box_pooler`.

It also splits detectron2's `fast_rcnn_inference_single_image` at the NMS:
:func:`per_class_candidates` yields the per-class candidate boxes of one image, to which a
project applies its own NMS / scoring, and :func:`nms_detections` applies the NMS of
`MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE` (`d2align.modeling.per_class_nms`: standard, Soft-NMS,
CL-balanced). With the default "standard" the heads run detectron2's inference unchanged; with
another type their inference is detectron2's up to the NMS, then `nms_detections`. A subclass
that replaces the inference (`_forward_box`) refuses a non-standard type.

Shape legend:
    R: proposals of one image
    K: foreground classes
    M: per-class candidates above the score threshold

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, build_box_head
from detectron2.structures import Boxes, Instances

from ..config import check_config
from .box_predictor import build_box_predictor
from .poolers import build_roi_box_pooler
from .postprocessing import SCORE_NMS_TYPES, nms_settings_from_config, per_class_nms

__all__ = [
    "D2AlignStandardROIHeads",
    "InferenceNMSMixin",
    "nms_detections",
    "per_class_candidates",
    "roi_heads_nms_from_config",
]


def roi_heads_nms_from_config(cfg) -> Dict[str, Any]:
    """`nms_type` and `nms_kwargs` of the shared ROI heads from `MODEL.D2ALIGN_ROI_HEADS`
    (checked; a config without d2align's keys gets a ValueError naming the key)."""
    node = cfg.MODEL.get("D2ALIGN_ROI_HEADS")
    check_config(
        node is not None,
        "MODEL.D2ALIGN_ROI_HEADS",
        node,
        "missing: the node is added by d2align.config.add_d2align_config",
    )
    nms_type, nms_kwargs = nms_settings_from_config(
        node, "MODEL.D2ALIGN_ROI_HEADS.", SCORE_NMS_TYPES
    )
    return {"nms_type": nms_type, "nms_kwargs": nms_kwargs}


class InferenceNMSMixin:
    """The NMS at inference of the shared ROI heads: `nms_type` and `nms_kwargs` from
    `MODEL.D2ALIGN_ROI_HEADS` (`roi_heads_nms_from_config`), checked at construction.

    List it before the detectron2 ROI heads class it extends (`class H(InferenceNMSMixin,
    StandardROIHeads)`); that class `H` implements the non-standard NMS in its `_forward_box`.
    A subclass of `H` that replaces `_forward_box` (its own inference) refuses a non-standard
    type, naming the key.
    """

    @configurable
    def __init__(
        self,
        *,
        nms_type: str = "standard",
        nms_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs,
    ):
        """
        Args:
            nms_type (str): the NMS at inference, one of `SCORE_NMS_TYPES`.
            nms_kwargs (dict): the other arguments of `per_class_nms` (Soft-NMS, CL-balanced).
            kwargs: the detectron2 ROI heads' arguments.
        """
        super().__init__(**kwargs)
        if nms_type not in SCORE_NMS_TYPES:
            raise ValueError(f"nms_type must be one of {SCORE_NMS_TYPES}, got {nms_type!r}")
        # the class that lists the mixin among its bases owns the NMS-aware inference
        owner = next(c for c in type(self).__mro__ if InferenceNMSMixin in c.__bases__)
        check_config(
            nms_type == "standard" or type(self)._forward_box is owner._forward_box,
            "MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE",
            nms_type,
            f"{type(self).__name__} has its own inference (_forward_box); use its own NMS keys",
        )
        self.nms_type = nms_type
        self.nms_kwargs = dict(nms_kwargs or {})

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(roi_heads_nms_from_config(cfg))
        return ret


@ROI_HEADS_REGISTRY.register()
class D2AlignStandardROIHeads(InferenceNMSMixin, StandardROIHeads):
    """StandardROIHeads whose box pooler comes from `build_roi_box_pooler` (PrRoIPool allowed)
    and whose box predictor from `build_box_predictor`.

    Same config keys as `StandardROIHeads`, plus `MODEL.ROI_BOX_HEAD.PREDICTOR`;
    `MODEL.ROI_BOX_HEAD.POOLER_TYPE` may also be "PrRoIPool". With the default predictor and any
    other pooler type the model is exactly detectron2's.
    """

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """detectron2's box branch; at inference with a non-standard NMS type, the detections
        of `nms_detections` instead of `box_predictor.inference`."""
        if self.training or self.nms_type == "standard":
            return super()._forward_box(features, proposals)
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        scores = self.box_predictor.predict_probs(predictions, proposals)
        return [
            nms_detections(b, s, p.image_size, self.box_predictor, self.nms_type, **self.nms_kwargs)
            for b, s, p in zip(boxes, scores, proposals)
        ]

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        # StandardROIHeads._init_box_head with the shared pooler and predictor builders
        box_pooler, pooled_shape = build_roi_box_pooler(cfg, input_shape)
        box_head = build_box_head(cfg, pooled_shape)
        return {
            "box_in_features": list(cfg.MODEL.ROI_HEADS.IN_FEATURES),
            "box_pooler": box_pooler,
            "box_head": box_head,
            "box_predictor": build_box_predictor(cfg, box_head.output_shape),
        }


def per_class_candidates(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates of one image before NMS, as detectron2's Fast R-CNN inference makes them:
    rows with non-finite values dropped, boxes clipped to the image, one candidate per
    (proposal, foreground class) with score > `score_thresh`.

    Args:
        boxes (Tensor[R, K * 4] or Tensor[R, 4]): class-specific or class-agnostic predicted
            boxes (`FastRCNNOutputLayers.predict_boxes`).
        scores (Tensor[R, K + 1]): class probabilities, background last
            (`FastRCNNOutputLayers.predict_probs`).
        image_shape (tuple[int, int]): (height, width) of the image.
        score_thresh (float): smallest score kept (exclusive).

    Returns:
        boxes (Tensor[M, 4]): candidate boxes, XYXY.
        scores (Tensor[M]): their class scores.
        classes (Tensor[M], int64): their classes in [0, K).
        proposal_idx (Tensor[M], int64): the proposal each one comes from, in [0, R).
    """
    num_proposals = scores.shape[0]
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    proposal_ids = torch.arange(num_proposals, device=scores.device)
    if not valid.all():
        boxes, scores, proposal_ids = boxes[valid], scores[valid], proposal_ids[valid]
    scores = scores[:, :-1]
    num_reg_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_reg_classes, 4)

    keep = scores > score_thresh
    rows, classes = keep.nonzero(as_tuple=True)
    boxes = boxes[rows, 0] if num_reg_classes == 1 else boxes[rows, classes]
    return boxes, scores[rows, classes], classes, proposal_ids[rows]


def nms_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    predictor,
    nms_type: str,
    **nms_kwargs,
) -> Instances:
    """detectron2's `fast_rcnn_inference_single_image` with the NMS of `nms_type`: the
    candidates of `per_class_candidates` above `predictor.test_score_thresh`, `per_class_nms`
    at `predictor.test_nms_thresh`, then the `predictor.test_topk_per_image` best (all if < 0).
    With "standard" the detections are detectron2's.

    Args:
        boxes (Tensor[R, K * 4] or Tensor[R, 4]): predicted boxes of one image.
        scores (Tensor[R, K + 1]): class probabilities, background last.
        image_shape (tuple[int, int]): (height, width).
        predictor: the box predictor (its test_score_thresh, test_nms_thresh,
            test_topk_per_image).
        nms_type (str): one of `SCORE_NMS_TYPES`.
        nms_kwargs: the other arguments of `per_class_nms`.

    Returns:
        Instances: D detections with `pred_boxes`, `scores` (as `per_class_nms` returns them:
        decayed for Soft-NMS) and `pred_classes`, in `per_class_nms`'s order.
    """
    cand_boxes, cand_scores, cand_classes, _ = per_class_candidates(
        boxes, scores, image_shape, predictor.test_score_thresh
    )
    keep, det_scores = per_class_nms(
        cand_boxes, cand_scores, cand_classes, nms_type, predictor.test_nms_thresh, **nms_kwargs
    )
    if predictor.test_topk_per_image >= 0:
        keep, det_scores = (
            keep[: predictor.test_topk_per_image],
            det_scores[: predictor.test_topk_per_image],
        )
    result = Instances(image_shape)
    result.pred_boxes = Boxes(cand_boxes[keep])
    result.scores = det_scores
    result.pred_classes = cand_classes[keep]
    return result
