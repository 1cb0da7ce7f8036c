"""IoU-Net inference on per-class candidate boxes (§3.2-3.4): NMS, then refinement.

`IoUNetPostProcessor` turns the candidates of one image (boxes after regression, their class
scores and classes) into detections:

1. NMS per class: "standard" (ranked by classification score), "soft_linear" /
   "soft_gaussian" (Soft-NMS) or "iou_guided" (Algorithm 1: ranked by the predicted IoU; a
   kept box takes the highest classification score of the boxes it suppresses);
2. the `topk_per_image` highest classification scores are kept;
3. optimization-based refinement (Algorithm 2, `d2align.structures.refine_boxes`) of the
   `refine_topk` most confident of them ("100 bounding boxes with highest classification
   confidence are further refined"), then clipping to the image.

The predicted IoU comes from any `iou_fn(boxes, classes)`, so the same code serves the IoU-Net
ROI heads and the standalone IoU-Net applied to another detector's boxes. The score of a
detection stays its classification confidence (Algorithm 1 outputs D with classification
scores); the predicted IoU is returned beside it as `pred_ious`.

Shape legend:
    M: candidates of one image; D: detections

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances

from d2align.config import check_choice, check_config
from d2align.modeling import nms_settings_from_config, per_class_nms
from d2align.structures import refine_boxes

from .config import NMS_TYPES

__all__ = ["IoUNetPostProcessor"]

IoUFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _ChangedRowsIoU:
    """`iou_fn` of fixed classes for `refine_boxes`, evaluating only the rows that changed
    since the previous call (Algorithm 2 line 3 visits only the boxes not yet stopped; a
    stopped box is passed again unchanged). Other rows return their previous, exact value
    with zero gradient, which `refine_boxes` does not use for stopped boxes.
    """

    def __init__(self, iou_fn: IoUFn, classes: torch.Tensor):
        self.iou_fn = iou_fn
        self.classes = classes
        self.last_boxes = None
        self.last_scores = None

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        """(Tensor[n, 4]) -> Tensor[n] predicted IoU, differentiable w.r.t. changed rows."""
        if self.last_boxes is None:
            out = self.iou_fn(boxes, self.classes)
        else:
            changed = (boxes.detach() != self.last_boxes).any(dim=1).nonzero().squeeze(1)
            out = self.last_scores + 0.0 * boxes.sum(dim=1)  # stays in the graph if none changed
            if changed.numel() > 0:
                new = self.iou_fn(boxes[changed], self.classes[changed])
                out = out.index_put((changed,), new.to(out.dtype))
        self.last_boxes, self.last_scores = boxes.detach().clone(), out.detach()
        return out


class IoUNetPostProcessor:
    """NMS (of the configured type) + top-k + optimization-based refinement, for one image."""

    @configurable
    def __init__(
        self,
        *,
        nms_type: str = "iou_guided",
        nms_thresh: float = 0.5,
        nms_kwargs: Optional[Dict[str, Any]] = None,
        topk_per_image: int = 100,
        refine: bool = True,
        refine_step_size: float = 0.5,
        refine_omega1: float = 0.001,
        refine_omega2: float = -0.01,
        refine_max_iters: int = 5,
        refine_topk: int = 100,
    ):
        """
        Args:
            nms_type (str): one of `NMS_TYPES` ("iou_guided": Algorithm 1).
            nms_thresh (float): Omega_nms (N_t of linear Soft-NMS).
            nms_kwargs (dict): the other arguments of `d2align.modeling.per_class_nms`
                (Soft-NMS, CL-balanced), as `nms_settings_from_config` reads them.
            topk_per_image (int): detections kept per image; < 0 keeps all.
            refine (bool): whether to run Algorithm 2.
            refine_step_size (float): lambda > 0.
            refine_omega1 (float): Omega_1 >= 0.
            refine_omega2 (float): Omega_2 < 0.
            refine_max_iters (int): T >= 1.
            refine_topk (int): detections refined, the most confident first; < 0 refines all.
        """
        check_choice("nms_type", nms_type, NMS_TYPES)
        self.nms_type = nms_type
        self.nms_thresh = nms_thresh
        self.nms_kwargs = dict(nms_kwargs or {})
        self.topk_per_image = topk_per_image
        self.refine = refine
        self.refine_args = dict(
            step_size=refine_step_size,
            omega1=refine_omega1,
            omega2=refine_omega2,
            max_iters=refine_max_iters,
        )
        self.refine_topk = refine_topk

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.IOU_NET
        r = c.REFINE
        k = "MODEL.IOU_NET."
        nms_type, nms_kwargs = nms_settings_from_config(c, k, NMS_TYPES)
        check_config(0 <= c.NMS_THRESH <= 1, k + "NMS_THRESH", c.NMS_THRESH, "must be in [0, 1]")
        check_config(r.STEP_SIZE > 0, k + "REFINE.STEP_SIZE", r.STEP_SIZE, "must be > 0 (lambda)")
        check_config(r.OMEGA1 >= 0, k + "REFINE.OMEGA1", r.OMEGA1, "must be >= 0 (Omega_1)")
        check_config(r.OMEGA2 < 0, k + "REFINE.OMEGA2", r.OMEGA2, "must be < 0 (Omega_2)")
        check_config(r.MAX_ITERS >= 1, k + "REFINE.MAX_ITERS", r.MAX_ITERS, "must be >= 1 (T)")
        check_config(r.TOPK >= 1, k + "REFINE.TOPK", r.TOPK, "must be >= 1")
        check_config(
            not r.ENABLED or c.POOLER_TYPE == "PrRoIPool",
            k + "POOLER_TYPE",
            c.POOLER_TYPE,
            "must be 'PrRoIPool' when MODEL.IOU_NET.REFINE.ENABLED (refinement needs the "
            "gradient of the predicted IoU w.r.t. the box, which only PrRoIPool provides)",
        )
        return {
            "nms_type": nms_type,
            "nms_thresh": c.NMS_THRESH,
            "nms_kwargs": nms_kwargs,
            "topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "refine": r.ENABLED,
            "refine_step_size": r.STEP_SIZE,
            "refine_omega1": r.OMEGA1,
            "refine_omega2": r.OMEGA2,
            "refine_max_iters": r.MAX_ITERS,
            "refine_topk": r.TOPK,
        }

    def nms(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        classes: torch.Tensor,
        iou_fn: IoUFn,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NMS of the configured type, per class.

        Args:
            boxes (Tensor[M, 4]): candidate boxes.
            scores (Tensor[M]): classification scores.
            classes (Tensor[M], int64): classes.
            iou_fn (callable): (Tensor[M, 4], Tensor[M]) -> Tensor[M] predicted IoU; called
                on all candidates only for IoU-guided NMS.

        Returns:
            keep (Tensor[D'], int64): kept candidates, by decreasing new score.
            scores (Tensor[D']): their scores after NMS (Soft-NMS: decayed; IoU-guided: the
                cluster's maximum).
            pred_ious (Tensor[D'] or None): their predicted IoU (IoU-guided NMS only).
        """
        if self.nms_type != "iou_guided":
            keep, new_scores = per_class_nms(
                boxes, scores, classes, self.nms_type, self.nms_thresh, **self.nms_kwargs
            )
            return keep, new_scores, None
        with torch.no_grad():
            pred_ious = iou_fn(boxes, classes)
        keep, new_scores = per_class_nms(
            boxes, scores, classes, "iou_guided", self.nms_thresh, loc_scores=pred_ious
        )
        return keep, new_scores, pred_ious[keep]

    def __call__(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        classes: torch.Tensor,
        image_shape: Tuple[int, int],
        iou_fn: IoUFn,
    ) -> Instances:
        """Detections of one image.

        Args:
            boxes (Tensor[M, 4]): candidate boxes (after box regression), clipped.
            scores (Tensor[M]): classification scores.
            classes (Tensor[M], int64): classes.
            image_shape (tuple[int, int]): (height, width), to clip the refined boxes.
            iou_fn (callable): (Tensor[n, 4] boxes, Tensor[n] classes) -> Tensor[n] predicted
                IoU, differentiable w.r.t. the boxes when refinement is on.

        Returns:
            Instances: `pred_boxes` (Boxes[D]), `scores` (Tensor[D], classification
            confidence), `pred_classes` (Tensor[D]), `pred_ious` (Tensor[D], predicted IoU
            of the returned boxes), sorted by decreasing score.
        """
        keep, scores, pred_ious = self.nms(boxes, scores, classes, iou_fn)
        if self.topk_per_image >= 0:
            keep, scores = keep[: self.topk_per_image], scores[: self.topk_per_image]
            pred_ious = None if pred_ious is None else pred_ious[: self.topk_per_image]
        boxes, classes = boxes[keep], classes[keep]
        if pred_ious is None:
            with torch.no_grad():
                pred_ious = iou_fn(boxes, classes)

        if self.refine:
            boxes, pred_ious = self._refine(boxes, classes, pred_ious, image_shape, iou_fn)

        result = Instances(image_shape)
        result.pred_boxes = Boxes(boxes)
        result.scores = scores
        result.pred_classes = classes
        result.pred_ious = pred_ious.detach()
        return result

    def _refine(
        self,
        boxes: torch.Tensor,
        classes: torch.Tensor,
        pred_ious: torch.Tensor,
        image_shape: Tuple[int, int],
        iou_fn: IoUFn,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 2 on the first `refine_topk` of the D detections (sorted by score) that
        have a positive size (clipping may leave empty boxes, which have no gradient); the
        refined boxes are clipped to the image. Returns the new (Tensor[D, 4], Tensor[D]);
        a refined box's predicted IoU is that of the box before clipping."""
        n = boxes.shape[0] if self.refine_topk < 0 else min(self.refine_topk, boxes.shape[0])
        top = torch.arange(n, device=boxes.device)
        top = top[(boxes[:n, 2] > boxes[:n, 0]) & (boxes[:n, 3] > boxes[:n, 1])]
        if top.numel() == 0:
            return boxes, pred_ious
        refined, refined_ious, _ = refine_boxes(
            boxes[top], _ChangedRowsIoU(iou_fn, classes[top]), **self.refine_args
        )
        refined = Boxes(refined)
        refined.clip(image_shape)
        boxes, pred_ious = boxes.clone(), pred_ious.clone()
        boxes[top] = refined.tensor.to(boxes.dtype)
        pred_ious[top] = refined_ious.to(pred_ious.dtype)
        return boxes, pred_ious
