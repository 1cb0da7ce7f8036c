"""stage_diagnostics.py's matching and table on hand-made boxes (the script itself runs in
tests/test_readme_commands.py)."""

import importlib.util
import os

import pytest
import torch
from detectron2.structures import BoxMode

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "stage_diagnostics.py")


@pytest.fixture(scope="module")
def diag():
    spec = importlib.util.spec_from_file_location("stage_diagnostics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORD = {
    "annotations": [
        {"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0},
        {"bbox": [0, 0, 10, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
        {"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 1},
    ]
}


def test_matched_iou_is_class_aware_and_ignores_crowd(diag):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 10.0]])
    classes = torch.tensor([1, 2, 3])
    # box 0 = GT 0 (class 1); box 1 is the crowd box of class 2 (ignored) and half of GT 1;
    # class 3 has no GT
    ious = diag.matched_ious(boxes, classes, RECORD)
    torch.testing.assert_close(ious, torch.tensor([1.0, 0.5, 0.0]))
    assert diag.matched_ious(boxes, classes, {"annotations": []}).tolist() == [0.0] * 3


def test_summary_groups_by_entering_iou(diag):
    # (entering, after stage 1, after stage 2) for four detections; one below 0.5 is not shown
    ious = torch.tensor(
        [[0.55, 0.65, 0.60], [0.58, 0.50, 0.70], [0.95, 0.90, 0.97], [0.30, 0.9, 0.9]]
    )
    peaks = torch.tensor([[0.2, 0.4], [0.4, 0.6], [0.5, 0.5], [0.1, 0.1]])
    rows = {tuple(r["entering_iou"]): r for r in diag.summarize(ious, peaks)}
    low = rows[(0.5, 0.6)]
    assert low["count"] == 2
    assert low["mean_iou"] == pytest.approx([0.565, 0.575, 0.65])
    assert low["improved_by_stage"] == [0.5, 0.5]  # 0.55 -> 0.65 -> 0.60; 0.58 -> 0.50 -> 0.70
    assert low["mean_peak_by_stage"] == pytest.approx([0.3, 0.5])
    assert rows[(0.9, 1.0)]["count"] == 1 and rows[(0.9, 1.0)]["improved_by_stage"] == [0.0, 1.0]
    assert rows[(0.7, 0.8)] == {"entering_iou": [0.7, 0.8], "count": 0}
