"""IoU-Net ROI heads (§3.4, Fig. 5): the R-CNN box branch with an IoU predictor in parallel.

Training adds the IoU loss (on jittered GT boxes, §3.1) to the Fast R-CNN losses. Inference
applies the box regression, then the configured NMS (IoU-guided by default), keeps the top
detections and refines the most confident ones by gradient ascent on the predicted IoU
(`IoUNetPostProcessor`).

Shape legend:
    N: images; R: proposals of one image; K: foreground classes

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.structures import ImageList, Instances

from d2align.modeling import D2AlignStandardROIHeads, per_class_candidates

from .iou_branch import IoUBranch
from .postprocess import IoUNetPostProcessor

__all__ = ["IoUNetROIHeads"]


@ROI_HEADS_REGISTRY.register()
class IoUNetROIHeads(D2AlignStandardROIHeads):
    """Standard FPN ROI heads (box pooler may be PrRoIPool) + IoU branch + IoU-Net inference.

    Detections carry `pred_ious` (the predicted IoU of each returned box) beside the usual
    `pred_boxes`, `scores` (classification confidence) and `pred_classes`.
    """

    @configurable
    def __init__(self, *, iou_branch: IoUBranch, postprocessor: IoUNetPostProcessor, **kwargs):
        """
        Args:
            iou_branch (IoUBranch): pooler + IoU head.
            postprocessor (IoUNetPostProcessor): NMS and refinement of the detections.
            kwargs: arguments of `StandardROIHeads`.
        """
        super().__init__(**kwargs)
        self.iou_branch = iou_branch
        self.postprocessor = postprocessor

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["iou_branch"] = IoUBranch(cfg, input_shape)
        ret["postprocessor"] = IoUNetPostProcessor(cfg)
        return ret

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See `StandardROIHeads.forward`; training also returns "loss_iou"."""
        if not self.training:
            return super().forward(images, features, proposals, targets)
        assert targets, "'targets' argument is required during training"
        iou_losses = self.iou_branch.losses(features, targets)
        proposals, losses = super().forward(images, features, proposals, targets)
        losses.update(iou_losses)
        return proposals, losses

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Training: detectron2's box branch. Inference: per image, the per-class candidates
        go through `IoUNetPostProcessor` with this image's IoU predictor."""
        if self.training:
            return super()._forward_box(features, proposals)
        return [
            self.postprocessor(*candidates, props.image_size, iou_fn)
            for (*candidates, iou_fn), props in zip(
                self.predict_candidates(features, proposals), proposals
            )
        ]

    def predict_candidates(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Callable]]:
        """The detections of every image before NMS, and its IoU predictor (inference).

        Args:
            features (dict[str, Tensor]): backbone outputs, (N, C, H_l, W_l) each.
            proposals (list[Instances]): N images with `proposal_boxes`.

        Returns:
            list of N tuples (boxes Tensor[M, 4], scores Tensor[M], classes Tensor[M],
            iou_fn): the per-class candidates after box regression with score above
            `TEST.SCORE_THRESH_TEST` (clipped to the image), and
            `iou_fn(boxes Tensor[n, 4], classes Tensor[n]) -> Tensor[n]` predicted IoU.
        """
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        del box_features
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        scores = self.box_predictor.predict_probs(predictions, proposals)
        results = []
        for i, (boxes_i, scores_i, props) in enumerate(zip(boxes, scores, proposals)):
            cand_boxes, cand_scores, cand_classes, _ = per_class_candidates(
                boxes_i, scores_i, props.image_size, self.box_predictor.test_score_thresh
            )
            iou_fn = self.iou_branch.iou_fn_of_image(features, i)
            results.append((cand_boxes, cand_scores, cand_classes, iou_fn))
        return results
