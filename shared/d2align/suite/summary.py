"""What a suite reports about a finished run besides its `final_results.json`.

* the model's number of parameters (the model built from the run's config, on the CPU);
* the misalignment diagnostics of `d2align.diagnostics` on its final detections of the test
  set (read from `OUTPUT_DIR/inference/<test set>/coco_instances_results.json`, so nothing is
  run again): Pearson r of the score with the IoU (detections with IoU > 0.5 with the ground
  truth of their class, IoU-Net Fig. 2a) and the positives per IoU group after NMS (a ground
  truth counts once per group, Fig. 3); and a scatter of the score against the IoU.

Both are cached in `OUTPUT_DIR/suite_summary.json` (recomputed when the results are newer).
"""

import json
import logging
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_text
from .runner import SUMMARY_FILE
from .runs import Run, read_results

__all__ = ["POSITIVE_COLUMNS", "FIGURE", "read_payload", "run_summary"]

logger = logging.getLogger(__name__)
POSITIVE_COLUMNS = ["pos50", "pos60", "pos70", "pos80", "pos90"]
FIGURE = "misalignment/score_vs_iou.png"


def read_payload(run: Run) -> Optional[dict]:
    """The run's `final_results.json` (`d2align.suite.runs.read_results`)."""
    return read_results(run.results_file)


def _num_parameters(cfg) -> int:
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def _misalignment(cfg, run: Run, title: str) -> Optional[dict]:
    """Diagnostics of the run's detections on its first test set, with the figure, or None
    when the run has no detections file (it evaluated nothing)."""
    from detectron2.data import MetadataCatalog

    from d2align.diagnostics import coco_results_misalignment, plot_score_vs_iou

    if not cfg.DATASETS.TEST:
        return None
    dataset = cfg.DATASETS.TEST[0]
    results = run.out_dir / "inference" / dataset / "coco_instances_results.json"
    gt_json = MetadataCatalog.get(dataset).get("json_file", None)
    if not results.is_file() or not gt_json or not Path(gt_json).is_file():
        return None
    acc = coco_results_misalignment(gt_json, str(results))
    figure = run.out_dir / FIGURE
    r = plot_score_vs_iou(acc.ious, acc.confidence("score"), str(figure), f"{title}\non {dataset}")
    return {
        "dataset": dataset,
        "num_detections": int(acc.ious.size),
        "num_detections_iou_gt_0.5": int((acc.ious > 0.5).sum()),
        "pearson_score_vs_iou": None if r != r else r,
        "positives_by_iou": dict(zip(acc.groups(), acc.counts["after NMS"].tolist())),
        "figure": str(figure),
    }


def run_summary(run: Run) -> dict:
    """{"num_parameters", "misalignment"} of a finished run, from the cache when current.

    Values that cannot be computed are None (a missing detections file, a config whose model
    does not build here); the reason is logged, never raised.
    """
    cache = run.out_dir / SUMMARY_FILE
    stamp = run.results_file.stat().st_mtime if run.results_file.exists() else None
    try:
        cached = json.loads(cache.read_text())
        if cached.get("results_mtime") == stamp:
            return cached
    except (OSError, ValueError):
        pass
    from d2align.engine import load_config
    from d2align.projects import config_hooks_for

    summary = {"results_mtime": stamp, "num_parameters": None, "misalignment": None}
    try:
        cfg = load_config(str(run.config), list(run.opts), config_hooks_for(str(run.config)))
        summary["num_parameters"] = _num_parameters(cfg)
        summary["misalignment"] = _misalignment(cfg, run, run.name)
    except Exception as e:  # a report must not die on one run's diagnostics
        logger.warning(f"{run.name}: no parameter count / diagnostics ({type(e).__name__}: {e})")
    if stamp is not None:
        atomic_write_text(cache, json.dumps(summary, indent=2))
    return summary
