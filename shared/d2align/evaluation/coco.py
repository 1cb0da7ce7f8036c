"""COCO evaluation with the papers' extra columns.

The five papers report AP at single IoU thresholds above 0.5 (AP60, AP70, AP80, AP90), where
better-localized boxes pay off. These columns are read from the same pycocotools COCOeval run
that produces detectron2's standard AP/AP50/AP75/APs/APm/APl, so every number in a row comes
from one evaluation.
"""

import logging
from typing import Dict, Optional, Sequence

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import create_small_table

# IoU thresholds of the extra columns; COCOeval's own thresholds are 0.50:0.05:0.95.
AP_IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

logger = logging.getLogger(__name__)


def ap_at_iou_thresholds(
    coco_eval, thresholds: Sequence[float] = AP_IOU_THRESHOLDS
) -> Dict[str, float]:
    """AP (in percent) at single IoU thresholds, from an accumulated COCOeval.

    Uses the same averaging as COCOeval.summarize: mean precision over the 101 recall points and
    the categories that have ground truth, area "all", the largest maxDets.

    Args:
        coco_eval: a pycocotools COCOeval (or detectron2's COCOeval_opt) after `accumulate()`.
        thresholds: IoU thresholds; each must be one of `coco_eval.params.iouThrs`.

    Returns:
        {"AP50": ..., "AP60": ..., ...}; NaN where no category has ground truth.
    """
    iou_thrs = np.asarray(coco_eval.params.iouThrs)
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    area_all = list(coco_eval.params.areaRngLbl).index("all")
    results = {}
    for thr in thresholds:
        matches = np.where(np.isclose(iou_thrs, thr))[0]
        if len(matches) != 1:
            raise ValueError(f"IoU threshold {thr} is not one of COCOeval's {iou_thrs.tolist()}")
        p = precision[matches[0], :, :, area_all, -1]
        p = p[p > -1]
        results[f"AP{round(thr * 100)}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return results


class D2AlignCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator with AP50...AP90 columns added to the "bbox" results.

    When the model made no prediction at all on a dataset that has ground truth, detectron2
    reports NaN; here every AP column is 0.0 instead (no detection means zero recall), with a
    warning, so that an untrained model reads as 0 in a results table rather than as missing.
    A dataset without any ground-truth annotation has no AP: `evaluate` says so in a warning
    naming the dataset and its file, and every AP column is NaN (null in final_results.json).
    """

    def __init__(self, dataset_name: str, *args, **kwargs):
        kwargs.setdefault("tasks", ("bbox",))
        super().__init__(dataset_name, *args, **kwargs)
        self._dataset_name = dataset_name

    def has_ground_truth(self) -> bool:
        """Whether the dataset has at least one ground-truth annotation that is not a crowd
        region (COCOeval ignores crowd regions: they neither count as objects nor penalise
        detections)."""
        return len(self._coco_api.getAnnIds(iscrowd=False)) > 0

    def evaluate(self, img_ids=None):
        if not self.has_ground_truth():
            crowd = len(self._coco_api.getAnnIds())
            what = (
                f"only crowd regions ({crowd} annotation(s), all iscrowd 1, which COCO "
                "evaluation ignores)"
                if crowd
                else "no ground-truth annotation"
            )
            logger.warning(
                f"Test set '{self._dataset_name}' ({self._metadata.get('json_file', '?')}) has "
                f"{what} in its {len(self._coco_api.getImgIds())} images: there is no "
                "ground truth to score, so AP is undefined there (NaN in the table below, null "
                "in final_results.json). Evaluate on a split with annotations."
            )
        return super().evaluate(img_ids)

    def _derive_coco_results(self, coco_eval, iou_type: str, class_names: Optional[list] = None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if iou_type != "bbox":
            return results
        if coco_eval is None:
            extra = {f"AP{round(t * 100)}": float("nan") for t in AP_IOU_THRESHOLDS}
            if self.has_ground_truth():
                logger.warning("No predictions: every AP column is reported as 0.")
                results = {k: 0.0 for k in results if not k.startswith("AP-")}
                extra = {k: 0.0 for k in extra}
        else:
            extra = ap_at_iou_thresholds(coco_eval)
        extra.pop("AP50")  # detectron2's AP50 (COCOeval.stats[1]) is the same number
        results.update(extra)
        columns = ["AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APs", "APm", "APl"]
        table = {k: results[k] for k in columns if k in results}
        self._logger.info("AP at IoU thresholds (bbox):\n" + create_small_table(table))
        return results
