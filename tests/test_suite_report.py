"""The suite's report: diagnostics of a detector's final detections (hand-worked), values that
are missing / None / NaN shown as "-" and null, progress parsing and the overall ETA, and the
one-seed noise note."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from d2align.diagnostics import coco_results_misalignment
from d2align.suite import (
    aggregate,
    load_suite,
    markdown_table,
    overall_eta,
    read_progress,
    summarize,
)
from d2align.suite.cli import noise_note
from d2align.suite.report import write_json

ROOT = Path(__file__).resolve().parents[1]


def test_coco_results_misalignment_matches_class_by_class_and_ignores_crowd(tmp_path):
    gt = {
        "images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10], "iscrowd": 1},
        ],
    }
    dets = [  # (image, class, XYWH box, score) -> IoU with the GT of its class
        (1, 1, [0, 0, 10, 10], 0.9),  # 1.0
        (1, 1, [0, 0, 10, 8.5], 0.7),  # 0.85
        (1, 1, [40, 40, 10, 10], 0.4),  # 0: on the crowd box, which is no ground truth
        (1, 2, [0, 0, 10, 10], 0.8),  # 0: on a class-1 object, not one of class 2
        (1, 2, [20, 20, 10, 6.5], 0.3),  # 0.65
        (2, 1, [5, 5, 10, 10], 0.5),  # 0: an image without ground truth
    ]
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    acc = coco_results_misalignment(str(tmp_path / "gt.json"), str(tmp_path / "res.json"))

    order = np.argsort(acc.confidence("score"))[::-1]  # scores are distinct: sort to compare
    # by score 0.9, 0.8, 0.7, 0.5, 0.4, 0.3
    np.testing.assert_allclose(acc.ious[order], [1.0, 0.0, 0.85, 0.0, 0.0, 0.65], atol=1e-6)
    expected_r = np.corrcoef([1.0, 0.85, 0.65], [0.9, 0.7, 0.3])[0, 1]  # IoU > 0.5 only
    assert acc.correlation("score") == pytest.approx(expected_r, abs=1e-6)
    # a ground truth counts once per group: class 1 in 0.8-0.9 and 0.9-1.0, class 2 in 0.6-0.7
    assert acc.counts["after NMS"].tolist() == [0, 1, 0, 1, 1]
    assert acc.groups() == ["0.5-0.6", "0.6-0.7", "0.7-0.8", "0.8-0.9", "0.9-1"]


def test_missing_none_and_nan_values_read_as_dash_and_null(tmp_path):
    payload = {
        "results": {"bbox": {"AP": 10.0, "AP50": None, "AP60": float("nan")}},
        "speed": {"train_s_per_iter": None},
    }
    row = summarize("x", payload)
    assert row["AP"] == 10.0 and row["AP50"] is None and row["AP60"] is None
    assert row["AP90"] is None and row["train_s_per_iter"] is None
    assert summarize("y", None)["AP"] is None  # no results file at all
    other = summarize("z", {"results": {"bbox": {"AP": 14.0, "AP50": 30.0}}})
    agg = aggregate("x", [row, other])  # a mean over the seeds that have the value
    assert agg["AP"] == 12.0 and agg["AP_std"] == pytest.approx(math.sqrt(8))
    assert agg["AP50"] == 30.0 and agg["AP50_std"] == 0.0 and agg["AP60"] is None
    line = markdown_table([aggregate("x", [row])]).splitlines()[2]
    assert line.startswith("| x | 10.0 | - | - | - |")
    write_json({"rows": [agg], "nan": float("nan")}, tmp_path / "r.json")  # strict JSON
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["nan"] is None and back["rows"][0]["AP60"] is None


def test_progress_of_training_and_evaluation(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(
        "[d2.utils.events]:  eta: 0:01:40  iter: 99  total_loss: 1.0\n"
        "[d2.evaluation.evaluator]: Start inference on 300 batches\n"
        "[d2.evaluation.evaluator]: Inference done 120/300. Dataloading: 0.0019 s/iter. "
        "Total: 0.05 s/iter. ETA=0:00:09\n"
    )
    progress = read_progress(log)
    assert progress.phase == "evaluating" and progress.eta_s == 9.0
    assert progress.describe() == "evaluating 120/300 eta 0:00:09"
    log.write_text("[d2.utils.events]:  eta: 1 day, 0:01:40  iter: 99  total_loss: 1.0\n")
    progress = read_progress(log)
    assert progress.describe(800) == "iter 99/800 eta 1 day, 0:01:40"
    assert progress.eta_s == 86400 + 100


def test_overall_eta_schedules_pending_runs_on_free_slots():
    # two slots: running 100 s and 20 s; pending 50 then 30 go to the slot free first:
    # 20 + 50 = 70, then min(100, 70) + 30 = 100 -> done at max(100, 100) = 100
    assert overall_eta([100.0, 20.0], [50.0, 30.0], 2) == 100.0
    assert overall_eta([100.0, 20.0], [50.0, 60.0], 2) == 130.0  # 70 + 60
    assert overall_eta([None], [None], 1) is None


def test_one_seed_note_cites_the_measured_spread():
    headline = load_suite("headline", ROOT)
    note = noise_note(headline, ())
    assert "ONE training" in note and "noise" in note
    assert "AP 19.1, 12.5 with seeds 42, 1 (std 4.7" in note  # |19.1 - 12.5| / sqrt(2)
    several = noise_note(headline, (1, 2))
    assert "mean ± sample std over seeds [1, 2]" in several and "paired by seed" in several
