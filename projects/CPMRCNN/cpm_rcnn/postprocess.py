"""CPM R-CNN inference (§3.4), as a mixin of `CPMROIHeads`: the classification branch scores
the proposals; per class NMS (`MODEL.ROI_HEADS.NMS_THRESH_TEST`, 0.3) keeps at most
`TEST.DETECTIONS_PER_IMAGE` (96); the grid stages refine the kept boxes one after the other;
the ISM and RSM score the returned boxes and the fused score (eq. 4) ranks them.

Shape legend:
    R_i: proposals of image i; D_i: its detections; D: over the batch; K: foreground classes

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Dict, List

import torch
from detectron2.layers import batched_nms, cat
from detectron2.structures import Boxes, Instances

from d2align.modeling import per_class_candidates

from .cascade import fused_score

__all__ = ["CPMInferenceMixin"]


class CPMInferenceMixin:
    """Inference of `CPMROIHeads`: uses its `box_head`, `box_predictor`, `cascade_boxes`
    (`GridCascadeMixin`), `module_scores` (`ScoringModulesMixin`), `gamma` and `test_score`."""

    @torch.no_grad()
    def classify(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """The classification branch's class probabilities, list[Tensor[R_i, K + 1]]
        (background last), of each image's `proposal_boxes`."""
        box_features = self.box_head(
            self.pool_box(features, [p.proposal_boxes.tensor for p in proposals])
        )
        return self.box_predictor.predict_probs(self.box_predictor(box_features), proposals)

    @torch.no_grad()
    def select_detections(self, proposals: List[Instances], probs: List[torch.Tensor]):
        """§3.4's first step: per class, the proposals above the score threshold go through
        NMS (`MODEL.ROI_HEADS.NMS_THRESH_TEST`) and the best `TEST.DETECTIONS_PER_IMAGE` stay.

        Args:
            proposals (list[Instances]): `proposal_boxes` per image (R_i).
            probs (list[Tensor[R_i, K + 1]]): class probabilities, background last.

        Returns:
            boxes (list[Tensor[D_i, 4]]), cls_scores (list[Tensor[D_i]]), classes
            (list[Tensor[D_i]] int64): per image, the kept proposals (the cascade's input).
        """
        boxes, cls_scores, classes = [], [], []
        for props, probs_i in zip(proposals, probs):
            cand_boxes, cand_scores, cand_classes, _ = per_class_candidates(
                props.proposal_boxes.tensor,
                probs_i,
                props.image_size,
                self.box_predictor.test_score_thresh,
            )
            keep = batched_nms(
                cand_boxes, cand_scores, cand_classes, self.box_predictor.test_nms_thresh
            )[: self.box_predictor.test_topk_per_image]
            boxes.append(cand_boxes[keep])
            cls_scores.append(cand_scores[keep])
            classes.append(cand_classes[keep])
        return boxes, cls_scores, classes

    @torch.no_grad()
    def inference(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        probs: List[torch.Tensor],
    ) -> List[Instances]:
        """§3.4: NMS on the classified proposals, the cascade, the fused score.

        Args:
            features (dict[str, Tensor]): backbone outputs, (N, C, H_l, W_l) each.
            proposals (list[Instances]): `proposal_boxes` per image (R_i).
            probs (list[Tensor[R_i, K + 1]]): class probabilities, background last.

        Returns:
            list[Instances]: per image, the detections sorted by their fused score (by
                `cls_scores` with `test_score` "cls"): `pred_boxes`, `scores`,
                `pred_classes`, `cls_scores`, and `pred_ious` / `rsm_scores` for the enabled
                modules.
        """
        image_sizes = [p.image_size for p in proposals]
        boxes, cls_scores, classes = self.select_detections(proposals, probs)
        boxes = self.cascade_boxes(features, boxes, image_sizes)[-1]
        all_classes = cat(classes)
        ism, rsm = self.module_scores(features, boxes, all_classes)
        cls_scores = cat(cls_scores)
        if self.test_score == "cls":
            score = cls_scores
        else:
            score = fused_score(cls_scores, ism, rsm, self.gamma)
        results, start = [], 0
        for boxes_i, size in zip(boxes, image_sizes):
            rows = slice(start, start + len(boxes_i))
            start += len(boxes_i)
            order = score[rows].argsort(descending=True)
            result = Instances(size)
            result.pred_boxes = Boxes(boxes_i[order])
            result.scores = score[rows][order]
            result.pred_classes = all_classes[rows][order]
            result.cls_scores = cls_scores[rows][order]
            if ism is not None:
                result.pred_ious = ism[rows][order]
            if rsm is not None:
                result.rsm_scores = rsm[rows][order]
            results.append(result)
        return results
