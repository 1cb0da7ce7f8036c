"""`D2AlignStandardROIHeads`: detectron2's StandardROIHeads whose poolers may be PrRoIPool.

detectron2's `ROIPooler` accepts a fixed list of pooler types. The ROI heads of the d2align
projects (IoU-Net, Offset Bin, CPM R-CNN) build their poolers through
:func:`d2align.ops.build_roi_pooler`, so that `POOLER_TYPE: "PrRoIPool"` selects Precise RoI
Pooling (differentiable w.r.t. the box coordinates) and any other type detectron2's own pooler.
Subclass this class (and extend `from_config` / `_init_box_head`) rather than
`StandardROIHeads` to get that for the box branch; use :meth:`build_pooler` for extra branches.

It also splits detectron2's `fast_rcnn_inference_single_image` at the NMS:
:func:`per_class_candidates` yields the per-class candidate boxes of one image, to which a
project applies its own NMS / scoring.

Shape legend:
    R: proposals of one image
    K: foreground classes
    M: per-class candidates above the score threshold

Boxes are XYXY in absolute pixels of the network input.
"""
from typing import Dict, List, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    FastRCNNOutputLayers,
    StandardROIHeads,
    build_box_head,
)
from detectron2.structures import Boxes
from torch import nn

from ..ops import build_roi_pooler

__all__ = ["D2AlignStandardROIHeads", "per_class_candidates"]


@ROI_HEADS_REGISTRY.register()
class D2AlignStandardROIHeads(StandardROIHeads):
    """StandardROIHeads whose box pooler is built by `build_roi_pooler` (PrRoIPool allowed).

    Same config keys as `StandardROIHeads`; `MODEL.ROI_BOX_HEAD.POOLER_TYPE` may also be
    "PrRoIPool". With any other pooler type the model is exactly detectron2's.
    """

    @staticmethod
    def build_pooler(
        input_shape: Dict[str, ShapeSpec],
        in_features: List[str],
        resolution: int,
        sampling_ratio: int,
        pooler_type: str,
    ) -> Tuple[nn.Module, int]:
        """A pooler over `in_features` and their (common) channel count.

        Args:
            input_shape (dict[str, ShapeSpec]): shapes of the backbone outputs.
            in_features (list[str]): names of the feature maps pooled from, finest first.
            resolution (int): output side of the pooled features.
            sampling_ratio (int): as `ROIPooler`'s (ignored by PrRoIPool).
            pooler_type (str): "PrRoIPool" or any `ROIPooler` type.

        Returns:
            (nn.Module, int): the pooler and the channel count of its output.
        """
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"ROI heads: features {missing} are not among the backbone outputs "
                f"{sorted(input_shape)}"
            )
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"ROI heads: features {in_features} differ in channels {channels}")
        pooler = build_roi_pooler(
            output_size=resolution,
            scales=[1.0 / input_shape[f].stride for f in in_features],
            sampling_ratio=sampling_ratio,
            pooler_type=pooler_type,
        )
        return pooler, channels.pop()

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        # StandardROIHeads._init_box_head with the pooler built by `build_pooler`
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        box_pooler, channels = cls.build_pooler(
            input_shape,
            in_features,
            resolution,
            cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        box_head = build_box_head(
            cfg, ShapeSpec(channels=channels, height=resolution, width=resolution)
        )
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_head": box_head,
            "box_predictor": FastRCNNOutputLayers(cfg, box_head.output_shape),
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
