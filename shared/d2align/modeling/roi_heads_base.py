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
project applies its own NMS / scoring.

Shape legend:
    R: proposals of one image
    K: foreground classes
    M: per-class candidates above the score threshold

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Tuple

import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, build_box_head
from detectron2.structures import Boxes

from .box_predictor import build_box_predictor
from .poolers import build_roi_box_pooler

__all__ = ["D2AlignStandardROIHeads", "per_class_candidates"]


@ROI_HEADS_REGISTRY.register()
class D2AlignStandardROIHeads(StandardROIHeads):
    """StandardROIHeads whose box pooler comes from `build_roi_box_pooler` (PrRoIPool allowed)
    and whose box predictor from `build_box_predictor`.

    Same config keys as `StandardROIHeads`, plus `MODEL.ROI_BOX_HEAD.PREDICTOR`;
    `MODEL.ROI_BOX_HEAD.POOLER_TYPE` may also be "PrRoIPool". With the default predictor and any
    other pooler type the model is exactly detectron2's.
    """

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
