"""`D2AlignCascadeROIHeads`: detectron2's Cascade R-CNN heads with the shared box pooler (which
may be PrRoIPool) and a per-stage box predictor from `BOX_PREDICTOR_REGISTRY`.

Only the construction of the box branch differs from detectron2's `CascadeROIHeads`
(`_init_box_head`); training, the stage-to-stage proposals and inference are detectron2's,
except that a non-standard `MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE` replaces the final NMS (the
stage-averaged scores and the last stage's boxes then go through
:func:`d2align.modeling.roi_heads_base.nms_detections`).
Each stage has its own box head and its own predictor, built by
:func:`d2align.modeling.build_box_predictor` with the stage's
`Box2BoxTransform(MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS[k])`, and its own proposal
matcher at `MODEL.ROI_BOX_CASCADE_HEAD.IOUS[k]`. With the default predictor and a detectron2
pooler type the model is exactly detectron2's; with `POOLER_TYPE: "PrRoIPool"` the pooled
features of every stage are differentiable w.r.t. the box coordinates.

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Dict, List

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, build_box_head
from detectron2.structures import Instances

from ..config import check_config
from .box_predictor import build_box_predictor
from .poolers import build_roi_box_pooler
from .roi_heads_base import InferenceNMSMixin, nms_detections

__all__ = ["D2AlignCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class D2AlignCascadeROIHeads(InferenceNMSMixin, CascadeROIHeads):
    """CascadeROIHeads whose box pooler comes from `build_roi_box_pooler` (PrRoIPool allowed)
    and whose stages' box predictors from `build_box_predictor`.

    Same config keys as `CascadeROIHeads`, plus `MODEL.ROI_BOX_HEAD.PREDICTOR` (or one per
    stage, `MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS`) and `MODEL.D2ALIGN_ROI_HEADS` (the NMS at
    inference).
    """

    def _forward_box(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances], targets=None
    ):
        """detectron2's cascade; at inference with a non-standard NMS type, the stage-averaged
        scores and the last stage's boxes go through `nms_detections` instead of detectron2's
        `fast_rcnn_inference` (the stages run as in detectron2's `_forward_box`)."""
        if self.training or self.nms_type == "standard":
            return super()._forward_box(features, proposals, targets)
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        scores_per_stage, boxes = [], None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            scores_per_stage.append(self.box_predictor[k].predict_probs(predictions, proposals))
        predictor = self.box_predictor[-1]
        return [
            nms_detections(
                b,
                sum(stage_scores) * (1.0 / self.num_cascade_stages),
                size,
                predictor,
                self.nms_type,
                **self.nms_kwargs,
            )
            for b, stage_scores, size in zip(boxes, zip(*scores_per_stage), image_sizes)
        ]

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        # CascadeROIHeads._init_box_head with the shared pooler and predictor builders, and its
        # assertions as config errors
        reg_weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        ious = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS
        check_config(
            len(reg_weights) == len(ious),
            "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS",
            reg_weights,
            f"must hold one weight tuple per stage of MODEL.ROI_BOX_CASCADE_HEAD.IOUS {ious}",
        )
        check_config(
            cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG,
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
            cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG,
            "must be True: the cascade regresses class-agnostic boxes",
        )
        check_config(
            ious[0] == cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0],
            "MODEL.ROI_BOX_CASCADE_HEAD.IOUS",
            ious,
            "must start with MODEL.ROI_HEADS.IOU_THRESHOLDS[0] "
            f"({cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]}), the first stage's matcher",
        )
        names = list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.get("PREDICTORS", []))
        check_config(
            not names or len(names) == len(ious),
            "MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS",
            names,
            f"must be empty (every stage: MODEL.ROI_BOX_HEAD.PREDICTOR) or name one predictor "
            f"per stage of MODEL.ROI_BOX_CASCADE_HEAD.IOUS {ious}",
        )
        box_pooler, pooled_shape = build_roi_box_pooler(cfg, input_shape)
        box_heads, box_predictors, proposal_matchers = [], [], []
        for k, (match_iou, weights) in enumerate(zip(ious, reg_weights)):
            box_head = build_box_head(cfg, pooled_shape)
            box_heads.append(box_head)
            box_predictors.append(
                build_box_predictor(
                    cfg,
                    box_head.output_shape,
                    name=names[k] if names else None,
                    key=f"MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS[{k}]",
                    box2box_transform=Box2BoxTransform(weights=weights),
                )
            )
            proposal_matchers.append(Matcher([match_iou], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": list(cfg.MODEL.ROI_HEADS.IN_FEATURES),
            "box_pooler": box_pooler,
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": proposal_matchers,
        }
