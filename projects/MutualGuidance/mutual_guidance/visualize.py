"""Fig. 4 of the paper: positive anchors of the static rule and of the guided rules.

`positive_anchors` runs a model's head on one image and returns, for every rule, which anchors
are positive (classification positives for static and Localize to Classify, regression
positives for Classify to Localize). `draw_difference` draws, as in Fig. 4, the anchors positive
only for the static rule (red) and only for a guided rule (green: Localize to Classify,
yellow: Classify to Localize), over the ground truths (white).

Boxes are XYXY in the pixels of the model's input image (after resizing).
"""

from typing import Dict, Tuple

import cv2
import numpy as np
import torch
from detectron2.layers import cat
from detectron2.structures import Boxes
from torch import Tensor

from .assignment import assign_anchors

__all__ = ["COLORS", "positive_anchors", "draw_difference"]

# BGR colours of Fig. 4
COLORS = {
    "static": (0, 0, 255),  # red
    "localize_to_classify": (0, 200, 0),  # green
    "classify_to_localize": (0, 230, 255),  # yellow
    "gt": (255, 255, 255),  # white
}


@torch.no_grad()
def positive_anchors(model, inputs: dict) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Anchors and positive masks of every rule for one mapped training image.

    Args:
        model: a `MutualGuidanceRetinaNet` (any assignment; its predictions guide the rules).
        inputs: one dataset-mapper output with "image" (3, H, W) and "instances".

    Returns:
        anchors: (R, 4); masks: {"static", "localize_to_classify", "classify_to_localize"} ->
        (R,) bool positive anchors of that rule (for its guided task).
    """
    images = model.preprocess_image([inputs])
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(
        model.head(features), [model.num_classes, 4]
    )
    anchors = Boxes.cat(model.anchor_generator(features)).tensor
    pred_boxes = model.box2box_transform.apply_deltas(cat(deltas, dim=1)[0], anchors)
    pred_scores = cat(logits, dim=1)[0].sigmoid()
    gt = inputs["instances"].to(anchors.device)
    masks = {}
    for rule in COLORS:
        if rule == "gt":
            continue
        labels, _, reg_mask = assign_anchors(
            anchors,
            gt.gt_boxes.tensor,
            gt.gt_classes,
            pred_boxes,
            pred_scores,
            num_classes=model.num_classes,
            assignment=rule,
            sigma=model.sigma,
            iou_thresholds=model.iou_thresholds,
        )
        cls_positive = (labels >= 0) & (labels != model.num_classes)
        masks[rule] = reg_mask if rule == "classify_to_localize" else cls_positive
    return anchors, masks


def _rectangles(image: np.ndarray, boxes: Tensor, color, thickness: int = 1) -> None:
    for x0, y0, x1, y1 in boxes.round().int().tolist():
        cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness)


def draw_difference(
    image: np.ndarray,
    gt_boxes: Tensor,
    anchors: Tensor,
    static_mask: Tensor,
    guided_mask: Tensor,
    guided_rule: str,
    scale: float = 1.0,
) -> np.ndarray:
    """One Fig. 4 panel: static-only positives in red, `guided_rule`-only positives in its
    colour, ground truths in white, and the counts in the corner.

    Args:
        image: (H, W, 3) uint8 BGR, the model's input image.
        gt_boxes: (G, 4); anchors: (R, 4); static_mask, guided_mask: (R,) bool.
        guided_rule: "localize_to_classify" or "classify_to_localize".
        scale: the drawing is the image enlarged by this factor (small images).

    Returns:
        (H * scale, W * scale, 3) uint8 BGR drawing.
    """
    height, width = image.shape[:2]
    size = (round(width * scale), round(height * scale))
    canvas = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
    _rectangles(canvas, anchors[static_mask & ~guided_mask] * scale, COLORS["static"])
    _rectangles(canvas, anchors[guided_mask & ~static_mask] * scale, COLORS[guided_rule])
    _rectangles(canvas, gt_boxes * scale, COLORS["gt"], thickness=2)
    text = (
        f"{guided_rule}: both {int((static_mask & guided_mask).sum())}, "
        f"static only {int((static_mask & ~guided_mask).sum())}, "
        f"guided only {int((guided_mask & ~static_mask).sum())}"
    )
    cv2.putText(canvas, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, COLORS["gt"], 1)
    return canvas
