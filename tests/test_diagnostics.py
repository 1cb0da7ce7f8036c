import math

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes

from d2align.diagnostics import (
    localization_correlation,
    match_detections_to_gt,
    plot_positives_by_iou,
    plot_score_vs_iou,
    positives_by_iou,
)

GT = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 300.0, 300.0]])


def _shifted(gt, iou):
    """`gt` (a 100x100 box) shifted right so that its IoU with `gt` is exactly `iou`:
    IoU = (100 - d) / (100 + d)  =>  d = 100 (1 - iou) / (1 + iou)."""
    d = 100.0 * (1 - iou) / (1 + iou)
    return [gt[0] + d, gt[1], gt[2] + d, gt[3]]


def test_match_detections_to_gt():
    preds = torch.tensor(
        [_shifted(GT[1].tolist(), 0.8), _shifted(GT[0].tolist(), 0.55), [500.0, 0, 510, 10]]
    )
    iou, gt_idx = match_detections_to_gt(preds, Boxes(GT))
    assert torch.allclose(iou, torch.tensor([0.8, 0.55, 0.0]), atol=1e-5)
    assert gt_idx.tolist()[:2] == [1, 0] and gt_idx.dtype == torch.int64
    iou, gt_idx = match_detections_to_gt(preds.numpy(), torch.zeros(0, 4))
    assert torch.equal(iou, torch.zeros(3)) and gt_idx.tolist() == [-1, -1, -1]
    iou, gt_idx = match_detections_to_gt(torch.zeros(0, 4), GT)
    assert iou.shape == (0,) and gt_idx.shape == (0,)


def test_localization_correlation_matches_numpy():
    ious = np.array([0.95, 0.62, 0.71, 0.88, 0.55, 0.79, 0.3, 0.45])
    scores = np.array([0.4, 0.9, 0.5, 0.7, 0.65, 0.2, 0.99, 0.1])
    r = localization_correlation(torch.from_numpy(ious), scores)
    # only the 6 detections with IoU > 0.5 count
    expected = np.corrcoef(ious[:6], scores[:6])[0, 1]
    assert r == pytest.approx(expected, abs=1e-12)
    assert r != pytest.approx(np.corrcoef(ious, scores)[0, 1], abs=1e-3)
    # a perfectly aligned and an anti-aligned confidence
    assert localization_correlation(ious, 2 * ious + 1) == pytest.approx(1.0)
    assert localization_correlation(ious[:6], -ious[:6]) == pytest.approx(-1.0)


def test_localization_correlation_undefined_cases():
    assert math.isnan(localization_correlation([0.9], [0.3]))
    assert math.isnan(localization_correlation([0.6, 0.9, 0.7], [0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="differ in length"):
        localization_correlation([0.6, 0.9], [0.5])


def test_positives_by_iou_hand_example():
    g0, g1 = GT[0].tolist(), GT[1].tolist()
    detections = torch.tensor(
        [
            _shifted(g0, 0.95),  # GT 0, group [0.9, 1.0]
            _shifted(g0, 0.92),  # GT 0, same group: a duplicate, not counted
            _shifted(g0, 0.65),  # GT 0, group [0.6, 0.7)
            _shifted(g1, 0.65),  # GT 1, group [0.6, 0.7)
            _shifted(g1, 0.85),  # GT 1, group [0.8, 0.9)
            g1,  # GT 1, IoU exactly 1: the closed last group
            _shifted(g1, 0.4),  # below 0.5: not a positive
            [500.0, 500.0, 520.0, 520.0],  # matches nothing
        ]
    )
    counts = positives_by_iou(detections, GT)
    assert counts.dtype == np.int64
    assert counts.tolist() == [0, 2, 0, 1, 2]
    # a subset of the detections (as after NMS) never counts more in any group
    nms_kept = positives_by_iou(detections[[1, 3, 6]], GT)
    assert nms_kept.tolist() == [0, 1, 0, 0, 1]
    assert (nms_kept <= counts).all()
    assert positives_by_iou(detections, torch.zeros(0, 4)).tolist() == [0] * 5
    assert positives_by_iou(torch.zeros(0, 4), GT).tolist() == [0] * 5
    # coarser groups: GT 1's boxes at 0.85 and 1.0 now fall in one group and count once
    assert positives_by_iou(detections, GT, bin_edges=(0.5, 0.75, 1.0)).tolist() == [2, 2]
    with pytest.raises(ValueError, match="increasing"):
        positives_by_iou(detections, GT, bin_edges=(0.5, 0.5, 1.0))


def _png_ok(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    ious = rng.uniform(0.3, 1.0, 300)
    scores = 0.5 * ious + rng.normal(0, 0.1, 300)
    path = tmp_path / "fig2" / "score_vs_iou.png"
    r = plot_score_vs_iou(torch.from_numpy(ious), scores, str(path), title="FPN")
    assert _png_ok(path)
    assert r == pytest.approx(localization_correlation(ious, scores))

    path = tmp_path / "positives.png"
    counts = {
        "No-NMS": [30, 40, 50, 45, 20],
        "NMS": [25, 30, 35, 20, 8],
        "IoU-NMS": [24, 30, 37, 28, 12],
    }
    plot_positives_by_iou(counts, str(path), title="positives after NMS")
    assert _png_ok(path)
    with pytest.raises(ValueError, match="expected 5"):
        plot_positives_by_iou({"NMS": [1, 2]}, str(tmp_path / "bad.png"))
