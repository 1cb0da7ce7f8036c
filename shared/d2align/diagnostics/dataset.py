"""Misalignment diagnostics over a whole dataset (IoU-Net Fig. 2 and 3), for any detector.

`MisalignmentAccumulator` gathers, image by image and class by class, the IoU of each
detection with the ground truth of its class it overlaps most, the detection's confidences, and
the positives per IoU group of each set of kept boxes; `coco_results_misalignment` feeds it
with a detector's final detections as detectron2's `COCOEvaluator` writes them
(`coco_instances_results.json`), so that every trained model gets the same diagnostics
without running it again.

Shape legend:
    N: detections of one image
    K: detections kept by one method (indices into the N)
    G: ground-truth boxes of the same image
Boxes are XYXY in absolute pixels.
"""

import json
from collections import defaultdict
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from .misalignment import (
    IOU_BIN_EDGES,
    localization_correlation,
    match_detections_to_gt,
    positives_by_iou,
)

# cpu-module: the accumulators and COCO-results readers compute on the CPU (inputs are moved
# there by `_cpu`; the diagnostics tools bring model outputs there first)


__all__ = ["MisalignmentAccumulator", "coco_results_misalignment"]


class MisalignmentAccumulator:
    """Fig. 2 samples and Fig. 3 counts summed over the images of a dataset.

    Args:
        confidences: names of the per-detection confidences to correlate with the IoU
            (e.g. "score", "pred_iou").
        kept_by: names of the box sets whose positives are counted (e.g. "No-NMS", "NMS").
        bin_edges: the IoU groups (see `positives_by_iou`).
    """

    def __init__(
        self,
        confidences: Sequence[str],
        kept_by: Sequence[str],
        bin_edges: Sequence[float] = IOU_BIN_EDGES,
    ):
        self.bin_edges = tuple(bin_edges)
        self._ious = []
        self._confidences = {name: [] for name in confidences}
        self.counts = {m: np.zeros(len(self.bin_edges) - 1, dtype=np.int64) for m in kept_by}

    def add_image(
        self,
        boxes: torch.Tensor,
        classes: torch.Tensor,
        confidences: Mapping[str, torch.Tensor],
        gt_boxes: torch.Tensor,
        gt_classes: torch.Tensor,
        kept: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> None:
        """Add the detections of one image, matched class by class.

        Args:
            boxes (Tensor[N, 4]): XYXY detections.
            classes (Tensor[N], int64): their classes.
            confidences (Mapping[str, Tensor[N]]): one value per detection for each name of
                `confidences`.
            gt_boxes (Tensor[G, 4]): XYXY ground truth.
            gt_classes (Tensor[G], int64): its classes.
            kept (Mapping[str, Tensor[K] int64]): for each name of `kept_by`, the indices of
                the detections that method keeps; default: all N for every method.
        """
        # everything on the CPU: the model that produced the detections may be on a GPU
        boxes, classes = _cpu(boxes).float(), _cpu(classes)
        gt_boxes, gt_classes = _cpu(gt_boxes).float(), _cpu(gt_classes)
        all_kept = torch.arange(len(boxes))
        kept = {m: _cpu(k) for m, k in kept.items()} if kept else {m: all_kept for m in self.counts}
        confidences = {name: _cpu(values).float() for name, values in confidences.items()}
        for c in classes.unique().tolist():
            in_class = classes == c
            gt_c = gt_boxes[gt_classes == c]
            iou, _ = match_detections_to_gt(boxes[in_class], gt_c)
            self._ious.append(iou)
            for name, values in confidences.items():
                self._confidences[name].append(values[in_class])
            for method, keep in kept.items():
                keep = keep[classes[keep] == c]
                self.counts[method] += positives_by_iou(boxes[keep], gt_c, self.bin_edges)

    @property
    def ious(self) -> np.ndarray:
        """ndarray[M]: IoU of every detection added so far with its matched GT."""
        return torch.cat(self._ious).numpy() if self._ious else np.zeros(0)

    def confidence(self, name: str) -> np.ndarray:
        """ndarray[M]: the confidence `name` of every detection, in the order of `ious`."""
        values = self._confidences[name]
        return torch.cat(values).numpy() if values else np.zeros(0)

    def correlation(self, name: str, min_iou: float = 0.5) -> float:
        """Pearson r of the IoU and confidence `name` over detections with IoU > min_iou."""
        return localization_correlation(self.ious, self.confidence(name), min_iou)

    def groups(self):
        """Names of the IoU groups, e.g. "0.5-0.6"."""
        edges = self.bin_edges
        return [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]


def _cpu(values) -> torch.Tensor:
    """A tensor (on any device), array or list as a CPU tensor."""
    return values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(values)


def _xyxy(xywh: Sequence[float]):
    x, y, w, h = xywh
    return [x, y, x + w, y + h]


def coco_results_misalignment(
    gt_json: str, results_json: str, bin_edges: Sequence[float] = IOU_BIN_EDGES
) -> MisalignmentAccumulator:
    """Diagnostics of a detector's final detections (after its NMS).

    Args:
        gt_json: COCO instances JSON of the evaluated split (crowd boxes are ignored).
        results_json: COCO results list (`image_id`, `category_id`, `bbox` XYWH, `score`),
            as detectron2's `COCOEvaluator` writes into `coco_instances_results.json`.
        bin_edges: the IoU groups.

    Returns:
        MisalignmentAccumulator: confidence "score", box set "after NMS".
    """
    with open(gt_json) as f:
        gt = json.load(f)
    with open(results_json) as f:
        results = json.load(f)
    gts: Dict[int, list] = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            gts[a["image_id"]].append((_xyxy(a["bbox"]), a["category_id"]))
    dets: Dict[int, list] = defaultdict(list)
    for d in results:
        dets[d["image_id"]].append((_xyxy(d["bbox"]), d["category_id"], d["score"]))
    acc = MisalignmentAccumulator(["score"], ["after NMS"], bin_edges)
    for image in gt["images"]:
        found = dets.get(image["id"], [])
        if not found:
            continue
        truth = gts.get(image["id"], [])
        acc.add_image(
            torch.tensor([d[0] for d in found], dtype=torch.float32).view(-1, 4),
            torch.tensor([d[1] for d in found], dtype=torch.int64),
            {"score": torch.tensor([d[2] for d in found], dtype=torch.float32)},
            torch.tensor([t[0] for t in truth], dtype=torch.float32).view(-1, 4),
            torch.tensor([t[1] for t in truth], dtype=torch.int64),
        )
    return acc
