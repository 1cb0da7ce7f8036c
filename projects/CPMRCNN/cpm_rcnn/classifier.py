"""`ClassificationOutputLayers`: Faster R-CNN's box predictor without the box regression.

CPM R-CNN's classification branch (§3.1) and its Resampling Scoring Module (§3.3, "the same
structure and loss function as the classification branch") are detectron2's box head followed
by this predictor: a linear layer to K + 1 class logits and the cross-entropy loss. The grid
branch localizes instead of the regression, so `predict_boxes` returns the proposals themselves
(a regression of zero), which keeps `FastRCNNOutputLayers`' interface for the d2align ROI heads.

Shape legend:
    R: boxes over the batch; D: box-head feature width; K: foreground classes
"""

from typing import List, Tuple

import torch
from detectron2.layers import cat, cross_entropy
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances

from d2align.modeling import BOX_PREDICTOR_REGISTRY

__all__ = ["ClassificationOutputLayers"]


@BOX_PREDICTOR_REGISTRY.register()
class ClassificationOutputLayers(FastRCNNOutputLayers):
    """`FastRCNNOutputLayers` with its class scores only (no `bbox_pred` layer).

    Config keys, `__init__` arguments and `predict_probs` are `FastRCNNOutputLayers`'; the
    box-regression arguments are accepted and unused.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.bbox_pred  # the grid branch localizes

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, None]:
        """
        Args:
            x (Tensor[R, D] or Tensor[R, C, H, W]): box-head features.

        Returns:
            (Tensor[R, K + 1], None): class logits (background last) and no box deltas.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), None

    def losses(self, predictions, proposals: List[Instances]):
        """Cross-entropy of the class logits against the proposals' `gt_classes` (K =
        background), averaged over the proposals; 0 when there are none.

        Returns:
            dict[str, Tensor]: {"loss_cls": ...}, times `loss_weight["loss_cls"]`.
        """
        scores, _ = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.int64, device=scores.device)
        )
        _log_classification_stats(scores, gt_classes)
        loss = cross_entropy(scores, gt_classes, reduction="mean")
        return {"loss_cls": loss * self.loss_weight.get("loss_cls", 1.0)}

    def predict_boxes(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """The proposals themselves, Tensor[R_i, 4] per image (class-agnostic, XYXY)."""
        return [p.proposal_boxes.tensor for p in proposals]

    def predict_boxes_for_gt_classes(self, predictions, proposals: List[Instances]):
        """The proposals themselves (see :meth:`predict_boxes`)."""
        return self.predict_boxes(predictions, proposals)
